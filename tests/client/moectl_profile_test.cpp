// moectl's task-profile commands and profile fields against the scripted fake moed:
// `profile list` (a table, files moed could not use, --json as received), `profile show`
// (each layer's top experts; 404 is exit 1 with moed's message; a bad name is exit 2
// without contacting moed), `profile create NAME --prompts FILE.jsonl` (the prompts of
// "text" and "prompt" lines and the source sent as JSON; 409 is exit 1; a missing option,
// an unreadable file or a bad line is exit 2 naming file and line; --json prints moed's
// answer), `profile delete` (DELETE on the name), `generate --profile --prune` (in the
// request), and `status` showing each running request's profile.
#include <atomic>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "tests/client/fake_server.h"
#include "tests/client/moectl_runner.h"

namespace moed::test {
namespace {

using nlohmann::json;

const char* k_summary =
    R"({"object":"profile","name":"c","model":"tinymoe","model_identity":"qwen3moe:00000000000000aa","prompts":3,)"
    R"("tokens":120,"created":1700000000,"source":"3 prompts from c.jsonl","n_layer":2,"n_expert":4,"n_expert_used":2})";

std::string error_json(int code, const std::string& type, const std::string& message) {
    return json{{"error", {{"type", type}, {"message", message}, {"code", code}}}}.dump();
}

TEST(moectl_profile, list_table_problems_and_json) {
    const std::string body = std::string(R"({"object":"list","data":[)") + k_summary +
                             R"(],"problems":["profile file '/var/lib/moed/profiles/x.profile': field 'checksum': corrupt"]})";
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        EXPECT_EQ(req->method, "GET");
        EXPECT_EQ(req->target, "/v1/profiles");
        c.write(json_response(body));
    });
    const moectl_result r = run_moectl({"--socket", server.path(), "profile", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* want : {"name", "prompts", "tokens", "created", "c ", " 3 ", "120", "2023-11-14 22:13:20 UTC",
                             "tinymoe", "3 prompts from c.jsonl", "files moed could not use",
                             "x.profile': field 'checksum': corrupt"}) {
        EXPECT_NE(r.out.find(want), std::string::npos) << "missing '" << want << "' in:\n" << r.out;
    }
    const moectl_result j = run_moectl({"--json", "--socket", server.path(), "profile", "list"});
    ASSERT_EQ(j.exit_code, 0) << j.err;
    EXPECT_EQ(j.out, body + "\n");
}

TEST(moectl_profile, show_and_its_errors) {
    std::string detail = k_summary;
    detail.pop_back();
    detail += R"(,"layers":[{"layer":0,"experts":[{"expert":3,"score":0.5,"selection":0.75},{"expert":1,"score":0.25,"selection":0.5}]},)"
              R"({"layer":1,"experts":[{"expert":0,"score":0.125,"selection":1.0}]}]})";
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->target == "/v1/profiles/c") c.write(json_response(detail));
        else c.write(json_response(error_json(404, "not_found_error", "no profile named 'zz'"), 404, "Not Found"));
    });
    const moectl_result r = run_moectl({"--socket", server.path(), "profile", "show", "c"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* want : {"profile c", "qwen3moe:00000000000000aa", "3 prompts, 120 tokens", "L0", "3 0.500 (0.75)",
                             "1 0.250 (0.50)", "L1", "0 0.125 (1.00)"}) {
        EXPECT_NE(r.out.find(want), std::string::npos) << "missing '" << want << "' in:\n" << r.out;
    }
    const moectl_result missing = run_moectl({"--socket", server.path(), "profile", "show", "zz"});
    EXPECT_EQ(missing.exit_code, 1);
    EXPECT_NE(missing.err.find("no profile named 'zz'"), std::string::npos) << missing.err;
    const std::size_t before = server.requests().size();
    const moectl_result bad = run_moectl({"--socket", server.path(), "profile", "show", "../etc"});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find("is not a profile name"), std::string::npos) << bad.err;
    EXPECT_EQ(server.requests().size(), before);
    EXPECT_EQ(run_moectl({"--socket", server.path(), "profile", "show"}).exit_code, 2);
    EXPECT_EQ(run_moectl({"--socket", server.path(), "profile"}).exit_code, 2);
    EXPECT_EQ(run_moectl({"--socket", server.path(), "profile", "frob"}).exit_code, 2);
}

TEST(moectl_profile, create_sends_the_prompts) {
    const auto file = temp_dir() / "prompts.jsonl";
    {
        std::ofstream out(file);
        out << R"({"domain":"c","id":"c-00","text":"int main(void) {\n"})" << "\n\n"
            << R"({"prompt":"static int x;"})" << "\n";
    }
    std::atomic<bool> conflict{false};
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        EXPECT_EQ(req->method, "POST");
        EXPECT_EQ(req->target, "/v1/profiles");
        if (conflict) c.write(json_response(error_json(409, "conflict_error", "profile 'c' exists; send \"replace\": true to overwrite it"), 409, "Conflict"));
        else c.write(json_response(k_summary, 201, "Created"));
    });
    const moectl_result r = run_moectl({"--socket", server.path(), "profile", "create", "c", "--prompts", file.string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("stored profile 'c': 3 prompts, 120 tokens"), std::string::npos) << r.out;
    ASSERT_EQ(server.requests().size(), 1u);
    const json sent = json::parse(server.requests()[0].body);
    EXPECT_EQ(sent["name"], "c");
    EXPECT_EQ(sent["prompts"], (json{"int main(void) {\n", "static int x;"}));
    EXPECT_EQ(sent["source"], "2 prompts from prompts.jsonl");
    EXPECT_FALSE(sent.contains("replace"));

    const moectl_result replaced = run_moectl(
        {"--socket", server.path(), "profile", "create", "c", "--prompts=" + file.string(), "--replace", "--source", "mine"});
    ASSERT_EQ(replaced.exit_code, 0) << replaced.err;
    const json sent2 = json::parse(server.requests()[1].body);
    EXPECT_EQ(sent2["replace"], true);
    EXPECT_EQ(sent2["source"], "mine");

    const moectl_result j = run_moectl({"--json", "--socket", server.path(), "profile", "create", "c", "--prompts", file.string()});
    ASSERT_EQ(j.exit_code, 0) << j.err;
    EXPECT_EQ(j.out, std::string(k_summary) + "\n");

    conflict = true;
    const moectl_result exists = run_moectl({"--socket", server.path(), "profile", "create", "c", "--prompts", file.string()});
    EXPECT_EQ(exists.exit_code, 1);
    EXPECT_NE(exists.err.find("409"), std::string::npos) << exists.err;
    EXPECT_NE(exists.err.find("profile 'c' exists"), std::string::npos) << exists.err;

    // Input errors never reach moed.
    const std::size_t before = server.requests().size();
    const moectl_result no_prompts = run_moectl({"--socket", server.path(), "profile", "create", "c"});
    EXPECT_EQ(no_prompts.exit_code, 2);
    EXPECT_NE(no_prompts.err.find("--prompts"), std::string::npos) << no_prompts.err;
    EXPECT_EQ(run_moectl({"--socket", server.path(), "profile", "create", "--prompts", file.string()}).exit_code, 2);
    const moectl_result unreadable =
        run_moectl({"--socket", server.path(), "profile", "create", "c", "--prompts", "/nonexistent/p.jsonl"});
    EXPECT_EQ(unreadable.exit_code, 2);
    EXPECT_NE(unreadable.err.find("/nonexistent/p.jsonl"), std::string::npos) << unreadable.err;
    const auto bad = temp_dir() / "bad.jsonl";
    std::ofstream(bad) << R"({"text":"ok"})" << "\n" << R"({"text": 5})" << "\n";
    const moectl_result bad_line = run_moectl({"--socket", server.path(), "profile", "create", "c", "--prompts", bad.string()});
    EXPECT_EQ(bad_line.exit_code, 2);
    EXPECT_NE(bad_line.err.find(bad.string() + ":2:"), std::string::npos) << bad_line.err;
    EXPECT_EQ(server.requests().size(), before);
}

TEST(moectl_profile, delete_and_generate_options) {
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->method == "DELETE") {
            c.write(json_response(R"({"object":"profile","name":"c","deleted":true})"));
        } else {
            c.write(json_response(
                R"({"id":"cmpl-1","object":"text_completion","model":"tinymoe","choices":[{"index":0,"text":"ok","finish_reason":"length"}],)"
                R"("usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3},)"
                R"("moed":{"profile":"c","profile_similarity":0.9,"profile_source":"request","pruned":{"experts_per_layer":6,"profile":"c"}}})"));
        }
    });
    const moectl_result del = run_moectl({"--socket", server.path(), "profile", "delete", "c"});
    ASSERT_EQ(del.exit_code, 0) << del.err;
    EXPECT_EQ(del.out, "deleted profile 'c'\n");
    EXPECT_EQ(server.requests()[0].method, "DELETE");
    EXPECT_EQ(server.requests()[0].target, "/v1/profiles/c");

    const moectl_result gen =
        run_moectl({"--json", "--socket", server.path(), "generate", "--profile", "c", "--prune", "6", "hi"});
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
    const json sent = json::parse(server.requests()[1].body);
    EXPECT_EQ(sent["profile"], "c");
    EXPECT_EQ(sent["prune"], (json{{"experts_per_layer", 6}}));
    EXPECT_EQ(run_moectl({"--socket", server.path(), "generate", "--prune", "0", "hi"}).exit_code, 2);
}

TEST(moectl_profile, status_shows_each_request_profile) {
    server_status s;
    s.version = "0.1.0";
    s.model.id = "tinymoe";
    request_status matched{"cmpl-1", "decode", 12, 5, 32, "pid=1 uid=0 gid=0"};
    matched.profile = "python";
    matched.profile_source = "matched";
    matched.profile_similarity = 0.8734;
    matched.pruned_experts_per_layer = 8;
    request_status named{"cmpl-2", "prefill", 40, 0, 32, "pid=2 uid=0 gid=0"};
    named.profile = "c";
    named.profile_source = "request";
    request_status none{"cmpl-3", "decode", 9, 3, 32, "pid=3 uid=0 gid=0"};
    none.profile_source = "none";
    none.profile_similarity = 0.41;
    request_status queued{"cmpl-4", "queued", 9, 0, 32, "pid=4 uid=0 gid=0"};
    s.requests = {matched, named, none, queued};
    const std::string body = json(s).dump();
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body));
    });
    const moectl_result r = run_moectl({"--socket", server.path(), "status"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* want : {"profile", "python (matched 0.87, pruned 8)", "c (named)", "none (0.41)"}) {
        EXPECT_NE(r.out.find(want), std::string::npos) << "missing '" << want << "' in:\n" << r.out;
    }
    const std::size_t queued_line = r.out.find("cmpl-4");
    ASSERT_NE(queued_line, std::string::npos);
    EXPECT_NE(r.out.substr(queued_line, r.out.find('\n', queued_line) - queued_line).find(" - "), std::string::npos) << r.out;
}

}  // namespace
}  // namespace moed::test
