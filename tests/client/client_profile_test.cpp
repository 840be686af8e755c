// libmoeclient's task-profile calls against the scripted fake moed, in C++ and through the
// C ABI: list (profiles and problems), show (layers of top experts), create (the JSON sent,
// the summary read back), delete (the DELETE sent), names that break the rules refused as
// invalid_argument without contacting moed, moed's 404/409 answers as http errors with the
// body handed out; a completion's "moed" object read from a response and from a stream's
// first chunk, the request's profile and prune fields sent, and the status's per-request
// profile fields.
#include <atomic>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "moed/client.h"
#include "moed/client.hpp"
#include "tests/client/fake_server.h"

namespace moed::test {
namespace {

using nlohmann::json;

const char* k_summary =
    R"({"object":"profile","name":"c","model":"tinymoe","model_identity":"qwen3moe:00000000000000aa","prompts":3,)"
    R"("tokens":120,"created":1700000000,"source":"api: 3 prompts","n_layer":2,"n_expert":4,"n_expert_used":2})";

std::string detail_body() {
    json j = json::parse(k_summary);
    j["layers"] = json::array({json{{"layer", 0}, {"experts", json::array({json{{"expert", 3}, {"score", 0.5}, {"selection", 0.75}}})}},
                               json{{"layer", 1}, {"experts", json::array()}}});
    return j.dump();
}

std::string not_found() {
    return json{{"error", {{"type", "not_found_error"}, {"message", "no profile named 'zz'"}, {"code", 404}}}}.dump();
}

// Answers by method and target.
fake_server profile_server() {
    return fake_server([](fake_connection& c) {
        auto req = c.read_request();
        if (!req) return;
        if (req->method == "GET" && req->target == "/v1/profiles") {
            c.write(json_response(std::string(R"({"object":"list","data":[)") + k_summary + R"(],"problems":["bad file"]})"));
        } else if (req->method == "GET" && req->target == "/v1/profiles/c") {
            c.write(json_response(detail_body()));
        } else if (req->method == "POST" && req->target == "/v1/profiles") {
            if (json::parse(req->body).value("replace", false)) c.write(json_response(k_summary, 201, "Created"));
            else c.write(json_response(json{{"error", {{"type", "conflict_error"}, {"message", "profile 'c' exists"}, {"code", 409}}}}.dump(), 409, "Conflict"));
        } else if (req->method == "DELETE" && req->target == "/v1/profiles/c") {
            c.write(json_response(R"({"object":"profile","name":"c","deleted":true})"));
        } else {
            c.write(json_response(not_found(), 404, "Not Found"));
        }
    });
}

TEST(client_profiles, list_show_create_delete) {
    fake_server server = profile_server();
    const client c(server.path());
    auto list = c.list_profiles();
    ASSERT_TRUE(list) << list.error().message;
    ASSERT_EQ(list->profiles.size(), 1u);
    const profile_summary& p = list->profiles[0];
    EXPECT_EQ(p.name, "c");
    EXPECT_EQ(p.model, "tinymoe");
    EXPECT_EQ(p.model_identity, "qwen3moe:00000000000000aa");
    EXPECT_EQ(p.prompts, 3u);
    EXPECT_EQ(p.tokens, 120);
    EXPECT_EQ(p.created, 1700000000);
    EXPECT_EQ(p.n_expert_used, 2u);
    EXPECT_EQ(list->problems, std::vector<std::string>{"bad file"});

    auto show = c.show_profile("c");
    ASSERT_TRUE(show) << show.error().message;
    EXPECT_EQ(show->summary.name, "c");
    ASSERT_EQ(show->layers.size(), 2u);
    ASSERT_EQ(show->layers[0].size(), 1u);
    EXPECT_EQ(show->layers[0][0].expert, 3u);
    EXPECT_DOUBLE_EQ(show->layers[0][0].score, 0.5);
    EXPECT_DOUBLE_EQ(show->layers[0][0].selection, 0.75);
    EXPECT_TRUE(show->layers[1].empty());
    EXPECT_EQ(show->raw_json, detail_body());

    auto missing = c.show_profile("zz");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, client_errc::http);
    EXPECT_EQ(missing.error().http_status, 404);
    EXPECT_NE(missing.error().message.find("no profile named 'zz'"), std::string::npos) << missing.error().message;

    profile_create_request req{"c", {"int x;", "int y;"}, false, "test"};
    auto conflict = c.create_profile(req);
    ASSERT_FALSE(conflict);
    EXPECT_EQ(conflict.error().http_status, 409);
    req.replace = true;
    auto created = c.create_profile(req);
    ASSERT_TRUE(created) << created.error().message;
    EXPECT_EQ(created->tokens, 120);
    const json sent = json::parse(server.requests().back().body);
    EXPECT_EQ(sent, (json{{"name", "c"}, {"prompts", {"int x;", "int y;"}}, {"replace", true}, {"source", "test"}}));

    auto deleted = c.delete_profile("c");
    ASSERT_TRUE(deleted) << deleted.error().message;
    EXPECT_EQ(deleted->name, "c");
    EXPECT_EQ(server.requests().back().method, "DELETE");

    // Bad names and empty prompt lists never reach moed.
    const std::size_t before = server.requests().size();
    for (const char* bad : {"", "a/b", "../x", ".hidden", "a b"}) {
        auto r = c.show_profile(bad);
        ASSERT_FALSE(r) << bad;
        EXPECT_EQ(r.error().code, client_errc::invalid_argument) << bad;
        EXPECT_EQ(c.delete_profile(bad).error().code, client_errc::invalid_argument) << bad;
    }
    EXPECT_EQ(c.create_profile({"ok", {}, false, ""}).error().code, client_errc::invalid_argument);
    EXPECT_EQ(server.requests().size(), before);
}

TEST(client_profiles, c_abi) {
    fake_server server = profile_server();
    moe_client* h = moe_client_open(server.path().c_str());
    ASSERT_NE(h, nullptr);
    char* out = nullptr;
    ASSERT_EQ(moe_profiles_json(h, &out), MOE_OK) << moe_last_error(h);
    EXPECT_NE(std::string(out).find("\"problems\""), std::string::npos);
    moe_free(out);
    ASSERT_EQ(moe_profile_json(h, "c", &out), MOE_OK) << moe_last_error(h);
    EXPECT_EQ(std::string(out), detail_body());
    moe_free(out);
    EXPECT_EQ(moe_profile_json(h, "zz", &out), MOE_ERR_HTTP);
    EXPECT_EQ(moe_last_http_status(h), 404);
    ASSERT_NE(out, nullptr);
    EXPECT_EQ(std::string(out), not_found());  // moed's error body is handed out
    moe_free(out);
    ASSERT_EQ(moe_profile_create(h, R"({"name":"c","prompts":["x"],"replace":true})", &out), MOE_OK) << moe_last_error(h);
    EXPECT_EQ(std::string(out), k_summary);
    moe_free(out);
    EXPECT_EQ(moe_profile_create(h, "[1,2]", &out), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(out, nullptr);
    ASSERT_EQ(moe_profile_delete(h, "c", nullptr), MOE_OK) << moe_last_error(h);
    EXPECT_EQ(moe_profile_delete(h, "../c", nullptr), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(moe_profile_json(h, nullptr, &out), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(moe_profile_delete(nullptr, "c", nullptr), MOE_ERR_INVALID_ARGUMENT);
    moe_client_close(h);
}

TEST(client_profiles, completion_moed_object_and_request_fields) {
    const std::string plain =
        R"({"id":"cmpl-1","choices":[{"index":0,"text":"ok","finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},)"
        R"("moed":{"profile":"c","profile_similarity":0.875,"profile_source":"matched","pruned":{"experts_per_layer":6,"profile":"c"}}})";
    std::atomic<bool> stream{false};
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        if (!stream) {
            c.write(json_response(plain));
            return;
        }
        c.write(sse_head(false));
        c.write(R"(data: {"choices":[{"index":0,"text":"a"}],"moed":{"profile":"py","profile_similarity":0.5,"profile_source":"request","pruned":null}})"
                "\n\n");
        c.write(R"(data: {"choices":[{"index":0,"text":"b","finish_reason":"length"}]})" "\n\ndata: [DONE]\n\n");
    });
    const client c(server.path());
    completion_request req;
    req.prompt = "x";
    req.profile = "c";
    req.prune_experts_per_layer = 6;
    auto r = c.complete(req);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->profile, "c");
    EXPECT_EQ(r->profile_source, "matched");
    EXPECT_DOUBLE_EQ(r->profile_similarity, 0.875);
    EXPECT_EQ(r->pruned_experts_per_layer, 6u);
    const json sent = json::parse(server.requests()[0].body);
    EXPECT_EQ(sent["profile"], "c");
    EXPECT_EQ(sent["prune"], (json{{"experts_per_layer", 6}}));

    stream = true;
    completion_request plain_req;
    plain_req.prompt = "x";
    auto s = c.stream(plain_req, [](std::string_view) { return true; });
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ(s->text, "ab");
    EXPECT_EQ(s->profile, "py");
    EXPECT_EQ(s->profile_source, "request");
    EXPECT_EQ(s->pruned_experts_per_layer, 0u);
    const json sent2 = json::parse(server.requests()[1].body);
    EXPECT_FALSE(sent2.contains("profile"));
    EXPECT_FALSE(sent2.contains("prune"));
}

TEST(client_profiles, status_request_profile_fields) {
    server_status s;
    request_status r{"cmpl-1", "decode", 1, 2, 3, "pid=1"};
    r.profile = "c";
    r.profile_source = "matched";
    r.profile_similarity = 0.75;
    r.pruned_experts_per_layer = 5;
    s.requests = {r};
    const std::string body = json(s).dump();
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body));
    });
    auto st = client(server.path()).status();
    ASSERT_TRUE(st) << st.error().message;
    ASSERT_EQ(st->requests.size(), 1u);
    EXPECT_EQ(st->requests[0].profile, "c");
    EXPECT_EQ(st->requests[0].profile_source, "matched");
    EXPECT_DOUBLE_EQ(st->requests[0].profile_similarity, 0.75);
    EXPECT_EQ(st->requests[0].pruned_experts_per_layer, 5u);
    // An older moed's status without the fields still parses.
    server_status old;
    from_json(json::parse(R"({"requests":[{"id":"x","state":"decode"}]})"), old);
    ASSERT_EQ(old.requests.size(), 1u);
    EXPECT_EQ(old.requests[0].profile, "");
    EXPECT_EQ(old.requests[0].pruned_experts_per_layer, 0u);
}

}  // namespace
}  // namespace moed::test
