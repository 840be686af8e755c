// The task-profile parts of daemon/api.h as pure functions: "profile" and "prune" in
// completion requests (names checked, prune an object with only experts_per_layer >= 1;
// each error names the field), the profile-creation body (name, prompts, replace, source;
// every missing, empty, wrong-typed or unknown field an error naming it), the "moed" object
// of responses and stream chunks, the JSON of profile summaries, lists and details, and the
// status of a full profile store (507 Insufficient Storage).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "daemon/api.h"
#include "scheduler/profile.h"

namespace moed::daemon {
namespace {

using json = nlohmann::json;

std::string error_of(const result<generation_request>& r) {
    EXPECT_FALSE(r.has_value());
    return r ? std::string() : r.error().message;
}
std::string error_of(const result<profile_create_request>& r) {
    EXPECT_FALSE(r.has_value());
    if (r) return {};
    EXPECT_EQ(r.error().code, errc::invalid_argument);
    return r.error().message;
}
result<generation_request> completion(std::string_view body) {
    return parse_generation_request(api_kind::completion, body, {});
}

TEST(ApiProfiles, ProfileAndPruneFields) {
    auto r = completion(R"({"prompt":"x","profile":"python-3.12","prune":{"experts_per_layer":8}})");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->profile, "python-3.12");
    EXPECT_EQ(r->prune_experts_per_layer, 8u);
    auto none = completion(R"({"prompt":"x","profile":null,"prune":null})");
    ASSERT_TRUE(none);
    EXPECT_EQ(none->profile, "");
    EXPECT_EQ(none->prune_experts_per_layer, 0u);
    auto chat = parse_generation_request(api_kind::chat, R"({"messages":[{"role":"user","content":"x"}],"profile":"c"})", {});
    ASSERT_TRUE(chat);
    EXPECT_EQ(chat->profile, "c");

    EXPECT_EQ(error_of(completion(R"({"prompt":"x","profile":3})")), "profile: expected a string, got integer");
    EXPECT_NE(error_of(completion(R"({"prompt":"x","profile":"a/b"})")).find("profile: profile name: only letters"),
              std::string::npos);
    EXPECT_NE(error_of(completion(R"({"prompt":"x","profile":""})")).find("must not be empty"), std::string::npos);
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","prune":8})")), "prune: expected an object, got integer");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","prune":{}})")), "prune.experts_per_layer: required");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","prune":{"experts_per_layer":0}})")),
              "prune.experts_per_layer: 0 is out of range [1, 65535]");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","prune":{"experts_per_layer":"8"}})")),
              "prune.experts_per_layer: expected an integer, got string");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","prune":{"experts_per_layer":8,"k":1}})")),
              "prune.k: unknown field (prune takes experts_per_layer)");
}

TEST(ApiProfiles, CreateBody) {
    auto r = parse_profile_create(R"({"name":"c","prompts":["a","b"],"replace":true,"source":"from c.jsonl"})");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->name, "c");
    EXPECT_EQ(r->prompts, (std::vector<std::string>{"a", "b"}));
    EXPECT_TRUE(r->replace);
    EXPECT_EQ(r->source, "from c.jsonl");
    auto minimal = parse_profile_create(R"({"name":"c","prompts":["a"]})");
    ASSERT_TRUE(minimal);
    EXPECT_FALSE(minimal->replace);
    EXPECT_EQ(minimal->source, "");

    EXPECT_NE(error_of(parse_profile_create("{")).find("malformed JSON"), std::string::npos);
    EXPECT_EQ(error_of(parse_profile_create("[]")), "request body: expected a JSON object, got array");
    EXPECT_EQ(error_of(parse_profile_create(R"({"prompts":["a"]})")), "name: required");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":1,"prompts":["a"]})")), "name: expected a string, got integer");
    EXPECT_NE(error_of(parse_profile_create(R"({"name":"../x","prompts":["a"]})")).find("name: profile name"),
              std::string::npos);
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c"})")), "prompts: required");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c","prompts":"a"})")),
              "prompts: expected an array of strings, got string");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c","prompts":[]})")), "prompts: must not be empty");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c","prompts":["a",2]})")), "prompts[1]: expected a string, got integer");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c","prompts":["a",""]})")), "prompts[1]: must not be empty");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c","prompts":["a"],"replace":"yes"})")),
              "replace: expected a boolean, got string");
    EXPECT_EQ(error_of(parse_profile_create(R"({"name":"c","prompts":["a"],"extra":1})")),
              "extra: unknown field (a profile takes name, prompts, replace, source)");
    json many{{"name", "c"}, {"prompts", json::array()}};
    for (std::size_t i = 0; i <= max_profile_prompts; ++i) many["prompts"].push_back("p");
    EXPECT_NE(error_of(parse_profile_create(many.dump())).find("more than the 1024 allowed"), std::string::npos);
    json long_source{{"name", "c"}, {"prompts", {"a"}}, {"source", std::string(max_profile_source_bytes + 1, 's')}};
    EXPECT_NE(error_of(parse_profile_create(long_source.dump())).find("source:"), std::string::npos);
}

TEST(ApiProfiles, MoedObject) {
    EXPECT_EQ(json::parse(moed_object_json(nullptr)),
              (json{{"profile", nullptr}, {"profile_similarity", 0.0}, {"profile_source", "none"}, {"pruned", nullptr}}));
    profile_report named{"c", "request", 0.75, 0};
    EXPECT_EQ(json::parse(moed_object_json(&named)),
              (json{{"profile", "c"}, {"profile_similarity", 0.75}, {"profile_source", "request"}, {"pruned", nullptr}}));
    profile_report pruned{"py", "matched", 0.5, 6};
    EXPECT_EQ(json::parse(moed_object_json(&pruned))["pruned"], (json{{"experts_per_layer", 6}, {"profile", "py"}}));
    profile_report none{"", "none", 0.25, 0};
    EXPECT_TRUE(json::parse(moed_object_json(&none))["profile"].is_null());

    const response_meta meta{api_kind::completion, "cmpl-1", 1, "tinymoe"};
    const json body = json::parse(completion_body(meta, "t", "stop", {1, 1}, &pruned));
    EXPECT_EQ(body["moed"]["profile"], "py");
    EXPECT_EQ(json::parse(completion_body(meta, "t", "stop", {1, 1}))["moed"]["profile_source"], "none");
    const std::string first = stream_event(meta, "a", true, &named, true);
    EXPECT_EQ(json::parse(first.substr(6))["moed"]["profile"], "c");
    EXPECT_FALSE(json::parse(stream_event(meta, "b", false).substr(6)).contains("moed"));
    const std::string last = stream_final_events(meta, "stop", {1, 1}, &named, true);
    EXPECT_EQ(json::parse(last.substr(6, last.find("\n\n") - 6))["moed"]["profile_source"], "request");
}

TEST(ApiProfiles, ProfileBodies) {
    scheduler::routing_accumulator acc(scheduler::routing_shape{2, 4, 2});
    acc.add_layer(0, 1, std::vector<float>{0.5f, 0.3f, 0.1f, 0.1f}, std::vector<std::int32_t>{0, 1});
    acc.add_layer(1, 1, std::vector<float>{0.1f, 0.1f, 0.2f, 0.6f}, std::vector<std::int32_t>{3, 2});
    const scheduler::profile p = scheduler::make_profile("c", "qwen3moe:00000000000000aa", "tinymoe", "api: 1 prompts", 1,
                                                         1700000000, acc);
    const json summary = json::parse(profile_summary_body(p));
    EXPECT_EQ(summary, (json{{"object", "profile"}, {"name", "c"}, {"model", "tinymoe"},
                             {"model_identity", "qwen3moe:00000000000000aa"}, {"prompts", 1}, {"tokens", 1},
                             {"created", 1700000000}, {"source", "api: 1 prompts"}, {"n_layer", 2}, {"n_expert", 4},
                             {"n_expert_used", 2}}));
    const json detail = json::parse(profile_detail_body(p, 2));
    ASSERT_EQ(detail["layers"].size(), 2u);
    EXPECT_EQ(detail["layers"][1]["experts"][0]["expert"], 3);
    EXPECT_FLOAT_EQ(detail["layers"][1]["experts"][0]["score"].get<float>(), 0.6f);
    EXPECT_EQ(detail["layers"][1]["experts"][1]["expert"], 2);
    EXPECT_EQ(detail["layers"][1]["experts"][0]["selection"], 1.0);
    const json list = json::parse(profiles_list_body({std::make_shared<const scheduler::profile>(p)}, {"bad"}));
    EXPECT_EQ(list["object"], "list");
    EXPECT_EQ(list["data"][0]["name"], "c");
    EXPECT_EQ(list["problems"], json::array({"bad"}));
    EXPECT_EQ(json::parse(profile_deleted_body("c")), (json{{"object", "profile"}, {"name", "c"}, {"deleted", true}}));
}

TEST(ApiProfiles, FullStoreIsInsufficientStorage) {
    // A profile store at its limit refuses with errc::no_space; the client sees 507.
    EXPECT_EQ(http_status_for(errc::no_space), 507u);
    const json e = json::parse(error_body(507, "the limit of 4096 profiles"));
    EXPECT_EQ(e["error"]["type"], "insufficient_storage_error");
    EXPECT_EQ(e["error"]["code"], "no_space");
    EXPECT_EQ(e["error"]["status"], 507);
    EXPECT_EQ(e["error"]["message"], "the limit of 4096 profiles");
}

}  // namespace
}  // namespace moed::daemon
