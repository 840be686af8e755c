// Runs the built moectl as a script would and checks its output and exit codes against the
// scripted fake moed: status opening with its summary line (model, size and where it sits,
// processor), memory by kind with the host slab's slot classes, the tier table with the
// model file's row and path, the residency map and requests (and --json as received);
// status --explain's glossary without a daemon; a newline at the end of every output; generate streaming text to stdout exactly as sent (prompt options
// and --chat in the request), generate --json, models, health, an error answer (exit 1,
// the message on stderr, the error JSON on stdout with --json), usage errors (exit 2) and
// a daemon that is not running (exit 3 with a clear message).

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "tests/client/fake_server.h"
#include "tests/client/moectl_runner.h"

namespace {

using nlohmann::json;
using moed::test::fake_connection;
using moed::test::fake_server;
using moed::test::json_response;

using run_result = moed::test::moectl_result;

// Runs moectl with `args`; `socket_env` non-empty sets MOED_SOCKET, empty removes it.
run_result moectl(const std::vector<std::string>& args, const std::string& socket_env = {},
                  const std::string& stdin_text = {}) {
    return moed::test::run_moectl(args, socket_env, stdin_text);
}

std::string status_body() {
    moed::server_status s;
    s.version = "0.1.0";
    s.uptime_s = 3725;
    s.model = {"tinymoe", "/models/tinymoe.gguf", "qwen3moe", 2, 4, 2, 256, 512, 21u << 20, 1u << 20, 20u << 20};
    s.isa = "avx512";
    s.threads = 4;
    s.running_sequences = 1;
    s.max_sequences = 8;
    s.queue_waiting = 0;
    s.queue_capacity = 64;
    s.requests = {{"cmpl-77", "decode", 12, 5, 32, "pid=42 uid=1000 gid=1000"}};
    moed::expert_cache_stats t;
    t.io_mode = "uring_direct";
    t.queue_depth = 16;
    t.host = {"host", 8u << 20, 4, 6u << 20, 3, 90, 10, 2, 5u << 20, 0, 0.5, 2.5e9, {10, 812.0, 900.0, 2410.0, 3000.0}};
    t.nvme = {"nvme", 2u << 20, 8, 2u << 20, 8};
    t.layer_residency = {"#+~.", "..##"};
    t.slot_classes = {{1u << 20, 2, {0, 2, 3}, 1}, {3u << 20, 2, {1}, 2}};
    s.tiers = t;
    moed::memory_stats& m = s.memory;
    m.host_budget = "25%";
    m.host_budget_bytes = 9u << 20;
    m.dense_bytes = 1u << 20;
    m.host_slab_bytes = 8u << 20;
    m.host_slab_slots = 4;
    m.host_slab_mlocked = true;
    m.kv_cache_bytes = 16u << 20;
    m.kv_cache_used_bytes = 3u << 20;
    m.kv_cache_cells = 2048;
    m.kv_cache_cells_used = 384;
    m.scratch_bytes = 5u << 20;
    m.held_bytes = 30u << 20;
    m.rss_bytes = 40u << 20;
    m.rss_peak_bytes = 41u << 20;
    m.physical_bytes = 64ull << 30;
    return json(s).dump();
}

// The whole line of `text` that starts with `prefix` ("" when none does).
std::string line_starting(const std::string& text, const std::string& prefix) {
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t end = std::min(text.find('\n', at), text.size());
        if (text.compare(at, prefix.size(), prefix) == 0) return text.substr(at, end - at);
        at = end + 1;
    }
    return {};
}

std::string event(const std::string& text) {
    return "data: " + json({{"choices", json::array({{{"index", 0}, {"text", text}}})}}).dump() + "\n\n";
}

TEST(moectl, not_running_exits_3_with_a_clear_message) {
    const std::string missing = (moed::test::temp_dir() / "nobody.sock").string();
    for (const char* command : {"status", "models", "health"}) {
        const run_result r = moectl({"--socket", missing, command});
        EXPECT_EQ(r.exit_code, 3) << command;
        EXPECT_NE(r.err.find("moed is not running: cannot connect to " + missing + " (No such file or directory)"),
                  std::string::npos)
            << r.err;
        EXPECT_EQ(r.out, "");
    }
    // Through the environment, and with generate.
    const run_result r = moectl({"generate", "hello"}, missing);
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
}

TEST(moectl, usage_errors_exit_2) {
    const run_result none = moectl({});
    EXPECT_EQ(none.exit_code, 2);
    EXPECT_NE(none.err.find("usage: moectl"), std::string::npos);
    EXPECT_EQ(moectl({"frobnicate"}).exit_code, 2);
    EXPECT_EQ(moectl({"--bogus", "status"}).exit_code, 2);
    EXPECT_EQ(moectl({"status", "extra"}).exit_code, 2);
    EXPECT_EQ(moectl({"generate"}).exit_code, 2);
    const run_result bad = moectl({"generate", "--max-tokens", "many", "hi"});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find("--max-tokens"), std::string::npos) << bad.err;
    EXPECT_EQ(moectl({"generate", "--temperature"}).exit_code, 2);
    EXPECT_EQ(moectl({"--socket"}).exit_code, 2);
    EXPECT_EQ(moectl({"--timeout", "-1", "status"}).exit_code, 2);

    const run_result help = moectl({"--help"});
    EXPECT_EQ(help.exit_code, 0);
    EXPECT_NE(help.out.find("Exit codes:"), std::string::npos);
    EXPECT_NE(help.out.find("3  moed is not running"), std::string::npos);
    EXPECT_EQ(moectl({"help"}).exit_code, 0);
    const run_result version = moectl({"--version"});
    EXPECT_EQ(version.exit_code, 0);
    EXPECT_NE(version.out.find("0.2.0"), std::string::npos);
}

TEST(moectl, status_table_and_json) {
    const std::string body = status_body();
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        EXPECT_EQ(req->target, "/v1/status");
        c.write(json_response(body));
    });
    const run_result r = moectl({"--socket", server.path(), "status"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string& o = r.out;
    for (const char* want : {"moed 0.1.0", "up 1h02m05s", "tinymoe", "qwen3moe", "I/O mode uring_direct",
                             "queue depth 16", "hit rate", "read GB/s", "load p50", "load p99", "90.0%", "2.50",
                             "812 us", "2.41 ms", "8.00 MiB (4)", "6.00 MiB", "3/4", "L0   #+~.  2/4",
                             "L1   ..##  2/4", "cmpl-77", "decode", "pid=42 uid=1000 gid=1000",
                             "1 running (max 8)",
                             "1 running (max 8)"}) {
        EXPECT_NE(o.find(want), std::string::npos) << "missing '" << want << "' in:\n" << o;
    }
    // The summary line comes first: 30 MiB held in RAM and the 12 MiB of experts the 8 MiB
    // slab does not hold, which stay in the model file.
    EXPECT_EQ(o.substr(0, o.find('\n')),
              "tinymoe  42.00 MiB: 30.00 MiB RAM (host slab 8.00 MiB mlocked) + 12.00 MiB of experts in the model "
              "file  CPU, AVX-512, 4 threads")
        << o;
    // Memory by kind, one row each.
    EXPECT_EQ(line_starting(o, "  dense weights"), "  dense weights     1.00 MiB");
    EXPECT_EQ(line_starting(o, "  KV cache"), "  KV cache         16.00 MiB  3.00 MiB used (384 of 2048 positions)");
    EXPECT_EQ(line_starting(o, "  host slab"), "  host slab         8.00 MiB  4 slots, mlocked; budget 25% = 9.00 MiB");
    EXPECT_EQ(line_starting(o, "  scratch"), "  scratch           5.00 MiB");
    EXPECT_EQ(line_starting(o, "  moed holds"), "  moed holds       30.00 MiB  the kinds above together");
    EXPECT_EQ(line_starting(o, "  process RSS"),
              "  process RSS      40.00 MiB  peak 41.00 MiB, locked 0 B; 64.00 GiB physical");
    // The host slab's slot classes, one line each, layers in runs.
    EXPECT_EQ(line_starting(o, "       2 slots of    1.00 MiB"), "       2 slots of    1.00 MiB     1 resident  layers 0,2-3");
    EXPECT_EQ(line_starting(o, "       2 slots of    3.00 MiB"), "       2 slots of    3.00 MiB     2 resident  layers 1");
    // The tier below the slab is named for what it is, with its path.
    EXPECT_NE(o.find("\nhost "), std::string::npos) << o;
    EXPECT_NE(o.find("\nmodel file "), std::string::npos) << o;
    EXPECT_EQ(o.find("\nnvme"), std::string::npos) << o;
    EXPECT_NE(o.find("\nmodel file = /models/tinymoe.gguf\n"), std::string::npos) << o;
    EXPECT_TRUE(o.ends_with("\n"));

    const run_result j = moectl({"--json", "--socket", server.path(), "status"});
    ASSERT_EQ(j.exit_code, 0) << j.err;
    EXPECT_EQ(j.out, body + "\n");
}

TEST(moectl, status_without_tiers) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(R"({"version":"0.1.0","model":{"id":"m"}})"));
    });
    const run_result r = moectl({"status"}, server.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("every expert is resident"), std::string::npos) << r.out;
}

TEST(moectl, generate_streams_text_as_sent) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write_pieces({moed::test::sse_head(true), moed::test::http_chunk(event("Once")),
                        moed::test::http_chunk(event(" upon\n")), moed::test::http_chunk(event(" a time")),
                        moed::test::http_chunk("data: [DONE]\n\n"), moed::test::http_chunk("")});
    });
    const run_result r = moectl({"--socket", server.path(), "generate", "--max-tokens", "3", "--temperature", "0.7",
                                 "--seed", "7", "--stop", "END", "--top-k", "20", "Tell", "a story"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "Once upon\n a time");  // a pipe gets exactly the text
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0].target, "/v1/completions");
    const json body = json::parse(requests[0].body);
    EXPECT_EQ(body["prompt"], "Tell a story");
    EXPECT_EQ(body["max_tokens"], 3);
    EXPECT_DOUBLE_EQ(body["temperature"].get<double>(), 0.7);
    EXPECT_EQ(body["seed"], 7);
    EXPECT_EQ(body["stop"], json::array({"END"}));
    EXPECT_EQ(body["top_k"], 20);
    EXPECT_EQ(body["stream"], true);
}

TEST(moectl, generate_chat_and_stdin) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(moed::test::sse_head(false) +
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi!\"},\"finish_reason\":\"stop\"}]}\n\n"
                "data: [DONE]\n\n");
    });
    const run_result r = moectl({"generate", "--chat", "--system", "Be nice.", "-"}, server.path(), "hello there");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "Hi!");
    const json body = json::parse(server.requests().at(0).body);
    EXPECT_EQ(server.requests().at(0).target, "/v1/chat/completions");
    ASSERT_EQ(body["messages"].size(), 2u);
    EXPECT_EQ(body["messages"][0]["role"], "system");
    EXPECT_EQ(body["messages"][0]["content"], "Be nice.");
    EXPECT_EQ(body["messages"][1]["role"], "user");
    EXPECT_EQ(body["messages"][1]["content"], "hello there");
}

TEST(moectl, generate_json_is_one_completion) {
    const std::string body = R"({"id":"cmpl-3","choices":[{"index":0,"text":"x","finish_reason":"length"}]})";
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body));
    });
    const run_result r = moectl({"generate", "--json", "hi"}, server.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, body + "\n");
    EXPECT_EQ(json::parse(server.requests().at(0).body)["stream"], false);
}

TEST(moectl, daemon_error_exits_1) {
    const std::string body = R"j({"error":{"type":"invalid_request_error","message":"prompt is too long (9000 tokens, context 4096)"}})j";
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body, 400, "Bad Request"));
    });
    const run_result r = moectl({"generate", "long prompt"}, server.path());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("prompt is too long (9000 tokens, context 4096)"), std::string::npos) << r.err;

    const run_result j = moectl({"--json", "generate", "long prompt"}, server.path());
    EXPECT_EQ(j.exit_code, 1);
    EXPECT_EQ(j.out, body + "\n");
}

TEST(moectl, draining_daemon_is_unhealthy) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(R"({"status":"draining"})", 503, "Service Unavailable"));
    });
    const run_result h = moectl({"health"}, server.path());
    EXPECT_EQ(h.exit_code, 1);
    EXPECT_NE(h.err.find("moed answered 503 Service Unavailable: draining"), std::string::npos) << h.err;
}

TEST(moectl, broken_model_is_unhealthy_and_shown_in_status) {
    const std::string reason = "/m.gguf: changed since it was opened (size 1 then, size 2 now)";
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->target == "/healthz") {
            c.write(json_response(nlohmann::json{{"status", "broken"}, {"error", reason}}.dump(), 503,
                                  "Service Unavailable"));
        } else {
            c.write(json_response(nlohmann::json{{"version", "0.1.0"},
                                                 {"model", {{"id", "m"}, {"state", "broken"}, {"error", reason}}}}
                                      .dump()));
        }
    });
    const run_result h = moectl({"health"}, server.path());
    EXPECT_EQ(h.exit_code, 1);
    EXPECT_NE(h.err.find("broken: " + reason), std::string::npos) << h.err;
    const run_result s = moectl({"status"}, server.path());
    EXPECT_EQ(s.exit_code, 0) << s.err;
    EXPECT_NE(s.out.find("BROKEN: " + reason), std::string::npos) << s.out;
}

TEST(moectl, models_and_health) {
    const std::string models = R"({"object":"list","data":[{"id":"tinymoe","object":"model","owned_by":"moed"}]})";
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->target == "/v1/models") c.write(json_response(models));
        else c.write(json_response(R"({"status":"ok"})"));
    });
    const run_result m = moectl({"models"}, server.path());
    ASSERT_EQ(m.exit_code, 0) << m.err;
    EXPECT_EQ(m.out, "tinymoe  moed\n");
    const run_result mj = moectl({"models", "--json"}, server.path());
    ASSERT_EQ(mj.exit_code, 0);
    EXPECT_EQ(mj.out, models + "\n");
    const run_result h = moectl({"health"}, server.path());
    ASSERT_EQ(h.exit_code, 0) << h.err;
    EXPECT_EQ(h.out, "ok\n");
    const run_result hj = moectl({"health", "--json"}, server.path());
    ASSERT_EQ(hj.exit_code, 0);
    EXPECT_EQ(hj.out, "{\"status\":\"ok\"}\n");
}

TEST(moectl, status_explain_is_a_glossary_without_moed) {
    const std::string missing = (moed::test::temp_dir() / "nobody.sock").string();
    const run_result r = moectl({"--socket", missing, "status", "--explain"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    // Each term opens a line of its own and says what it counts.
    for (const char* term : {"model file ", "host slab ", "ring ", "hot set ", "recall ", "late ", "wasted ",
                             "demand miss ", "KV cache ", "scratch ", "process RSS "}) {
        EXPECT_NE(r.out.find(std::string("\n") + term), std::string::npos) << "no '" << term << "' in:\n" << r.out;
    }
    EXPECT_NE(r.out.find("routed experts predicted / routed"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("evicted before anything used them"), std::string::npos) << r.out;
    EXPECT_TRUE(r.out.ends_with("\n"));
    EXPECT_EQ(r.err, "");

    EXPECT_EQ(moectl({"--socket", missing, "--json", "status", "--explain"}).exit_code, 2);
    const run_result bad = moectl({"--socket", missing, "status", "--verbose"});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find("unexpected argument '--verbose'"), std::string::npos) << bad.err;
}

// Whatever moectl prints, on stdout or stderr, ends its last line: a shell prompt never
// lands behind it. (A generation written to a pipe is the exception: it is exactly the text.)
TEST(moectl, every_output_ends_with_a_newline) {
    const std::string status = status_body();
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->target == "/v1/status") c.write(json_response(status));
        else if (req->target == "/v1/models") c.write(json_response(R"({"object":"list","data":[]})"));
        else if (req->target == "/v1/profiles") c.write(json_response(R"({"object":"list","data":[]})"));
        else if (req->target == "/healthz") c.write(json_response(R"({"status":"ok"})"));
        else c.write(json_response(R"({"error":{"type":"not_found","message":"no such thing"}})", 404, "Not Found"));
    });
    const std::string missing = (moed::test::temp_dir() / "nobody.sock").string();
    const std::vector<std::vector<std::string>> runs = {
        {"status"}, {"status", "--explain"}, {"--json", "status"}, {"models"}, {"--json", "models"},
        {"health"}, {"profile", "list"}, {"profile", "show", "nope"}, {"--json", "profile", "show", "nope"},
        {"--help"}, {"status", "--help"}, {"--version"}, {}, {"bogus"}, {"status", "extra"},
        {"generate"}, {"--socket", missing, "status"}, {"--socket", missing, "health"},
    };
    for (const auto& args : runs) {
        std::vector<std::string> full = {"--socket", server.path()};
        full.insert(full.end(), args.begin(), args.end());
        const run_result r = moectl(full);
        std::string shown;
        for (const std::string& a : args) shown += a + " ";
        EXPECT_FALSE(r.out.empty() && r.err.empty()) << shown;
        if (!r.out.empty()) {
            EXPECT_EQ(r.out.back(), '\n') << shown << "stdout:\n" << r.out;
        }
        if (!r.err.empty()) {
            EXPECT_EQ(r.err.back(), '\n') << shown << "stderr:\n" << r.err;
        }
    }
}

}  // namespace
