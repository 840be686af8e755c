// What moectl prints and how it exits when moed's answers or the user's input are hostile
// or incomplete, against the scripted fake moed:
// - every string moed sends that moectl prints (profile names, sources, models, problems in
//   `profile list/show/create`; model, paths, tiers, residency rows, the host budget and requests in
//   `status`; model ids; health; error messages) reaches the terminal escaped: no ESC, NUL,
//   CR, C1 control or raw newline inside a field, so no row can be forged; the generated
//   text itself is the product and is written as sent;
// - a stream moed cancelled (finish_reason "cancelled", as during a shutdown drain) or
//   ended with an unknown finish reason exits 1 with a message saying the text is
//   incomplete; one cut before [DONE] exits 3 (connection lost); one the reader stopped
//   reading (a closed stdout) still exits 0;
// - --help and -h after every command and subcommand print that command's usage to stdout
//   and exit 0, without contacting moed;
// - a prompt (stdin or argument), system text, stop string or profile source that is not
//   valid UTF-8 exits 2 naming the input and the byte offset, before contacting moed.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "tests/client/fake_server.h"
#include "tests/client/moectl_runner.h"

namespace moed::test {
namespace {

using nlohmann::json;

// A field with a screen clear, NUL, a forged row, a carriage return, a C1 CSI (U+009B) and
// a right-to-left override: all valid UTF-8, so it survives moed's JSON.
const std::string k_evil = std::string("ok\x1b[2J") + '\0' + "\nforged row\rX\xc2\x9b" "31m\xe2\x80\xae";
// How terminal_safe shows it.
const std::string k_evil_shown = "ok\\x1b[2J\\x00\\nforged row\\rX\\u{009b}31m\\u{202e}";

// No byte that can drive a terminal or start a line of its own.
void expect_inert(const std::string& text, const std::string& what) {
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto b = static_cast<unsigned char>(text[i]);
        EXPECT_FALSE(b == 0x1b || b == 0 || b == '\r' || b == 0x7f) << what << ": byte " << int(b) << " at " << i;
        if (b == 0xc2 && i + 1 < text.size()) {
            const auto next = static_cast<unsigned char>(text[i + 1]);
            EXPECT_FALSE(next >= 0x80 && next <= 0x9f) << what << ": C1 control at " << i;
        }
        EXPECT_NE(b, 0xff) << what << ": invalid UTF-8 at " << i;
    }
    EXPECT_EQ(text.find("\nforged row"), std::string::npos) << what << ":\n" << text;
}

// `body` with every "EVIL" string replaced by k_evil.
std::string with_evil(std::string body) {
    const std::string escaped = json(k_evil).dump();
    for (std::size_t at; (at = body.find("\"EVIL\"")) != std::string::npos;) body.replace(at, 6, escaped);
    return body;
}

TEST(moectl_output, server_strings_are_escaped_everywhere) {
    const std::string summary = R"({"object":"profile","name":"EVIL","model":"EVIL","model_identity":"EVIL",)"
                                R"("prompts":3,"tokens":120,"created":1700000000,"source":"EVIL","n_layer":1,)"
                                R"("n_expert":4,"n_expert_used":2})";
    std::string detail = summary;
    detail.pop_back();
    detail += R"(,"layers":[{"layer":0,"experts":[{"expert":3,"score":0.5,"selection":0.75}]}]})";

    server_status s;
    s.version = "EVIL_VERSION";
    s.isa = "EVIL_ISA";
    s.model = {"EVIL_ID", "EVIL_PATH", "EVIL_ARCH", 1, 4, 2, 256, 512, 1, 1, 1};
    s.requests = {{"EVIL_REQ", "EVIL_STATE", 1, 1, 4, "EVIL_PEER", "EVIL_PROFILE", "matched", 0.5, 0}};
    expert_cache_stats t;
    t.io_mode = "EVIL_IO";
    t.host.name = "EVIL_TIER";
    t.layer_residency = {"EVIL_ROW"};
    s.tiers = t;
    s.memory.host_budget = "EVIL_BUDGET";
    s.memory.rss_bytes = 1;
    std::string status = json(s).dump();
    for (const char* key : {"EVIL_VERSION", "EVIL_ISA", "EVIL_ID", "EVIL_PATH", "EVIL_ARCH", "EVIL_REQ", "EVIL_STATE",
                            "EVIL_PEER", "EVIL_PROFILE", "EVIL_IO", "EVIL_TIER", "EVIL_ROW", "EVIL_BUDGET"}) {
        const std::string quoted = std::string("\"") + key + "\"";
        const std::size_t at = status.find(quoted);
        ASSERT_NE(at, std::string::npos) << key;
        status.replace(at, quoted.size(), "\"EVIL\"");
    }
    status = with_evil(status);

    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->target == "/v1/profiles" && req->method == "GET")
            c.write(json_response(with_evil(R"({"object":"list","data":[)" + summary + R"(],"problems":["EVIL"]})")));
        else if (req->target == "/v1/profiles" && req->method == "POST")
            c.write(json_response(with_evil(summary), 201, "Created"));
        else if (req->target == "/v1/profiles/c")
            c.write(json_response(with_evil(detail)));
        else if (req->target == "/v1/models")
            c.write(json_response(with_evil(R"({"object":"list","data":[{"id":"EVIL","owned_by":"EVIL"}]})")));
        else if (req->target == "/healthz")
            c.write(json_response(with_evil(R"({"status":"EVIL"})")));
        else if (req->target == "/v1/status")
            c.write(json_response(status));
        else
            c.write(json_response(with_evil(R"({"error":{"type":"invalid_request_error","message":"EVIL"}})"), 400,
                                  "Bad Request"));
    });
    const std::string prompts = (temp_dir() / "evil-prompts.jsonl").string();
    { std::ofstream(prompts) << R"({"text":"int main("})" << "\n"; }

    const std::vector<std::vector<std::string>> commands{
        {"profile", "list"}, {"profile", "show", "c"}, {"profile", "create", "c", "--prompts", prompts},
        {"models"},          {"health"},              {"status"},
        {"generate", "hi"},  // the 400 error message
    };
    for (const auto& args : commands) {
        std::vector<std::string> argv{"--socket", server.path()};
        argv.insert(argv.end(), args.begin(), args.end());
        const moectl_result r = run_moectl(argv);
        const std::string what = args[0] + (args.size() > 1 ? " " + args[1] : "");
        expect_inert(r.out, what + " stdout");
        expect_inert(r.err, what + " stderr");
        const std::string& shown = args[0] == "generate" ? r.err : r.out;
        EXPECT_NE(shown.find(k_evil_shown), std::string::npos) << what << ":\n" << shown;
    }
    // Each profile is one row of the table: the header, one row, the problems title and one
    // problem line.
    const moectl_result list = run_moectl({"--socket", server.path(), "profile", "list"});
    ASSERT_EQ(list.exit_code, 0) << list.err;
    EXPECT_EQ(std::count(list.out.begin(), list.out.end(), '\n'), 5) << list.out;  // incl. the blank line
}

TEST(moectl_output, a_plain_text_error_body_is_escaped_bytes_and_all) {
    // Not JSON, so the client quotes the body itself: raw ESC, invalid UTF-8, a newline.
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(http_response(502, "Bad Gateway", "text/plain", "upstream \x1b]0;pwned\x07 \xff\xfe\nforged row"));
    });
    const moectl_result r = run_moectl({"status"}, server.path());
    EXPECT_EQ(r.exit_code, 1);
    expect_inert(r.err, "stderr");
    EXPECT_NE(r.err.find("upstream \\x1b]0;pwned\\x07 \\xff\\xfe\\nforged row"), std::string::npos) << r.err;
}

TEST(moectl_output, generated_text_is_written_as_sent) {
    // The model's output is the product: it goes to stdout byte for byte (a pipe gets
    // exactly the text), escape codes and all.
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(sse_head(false) +
                "data: {\"choices\":[{\"index\":0,\"text\":\"a\\u001b[1mb\\nc\",\"finish_reason\":\"stop\"}]}\n\n"
                "data: [DONE]\n\n");
    });
    const moectl_result r = run_moectl({"generate", "hi"}, server.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "a\x1b[1mb\nc");
}

std::string text_event(const std::string& text, const char* finish_reason = nullptr) {
    json choice{{"index", 0}, {"text", text}, {"finish_reason", nullptr}};
    if (finish_reason) choice["finish_reason"] = finish_reason;
    return "data: " + json{{"choices", json::array({choice})}}.dump() + "\n\n";
}

TEST(moectl_output, a_stream_moed_cancelled_exits_1) {
    // What moed sends when its shutdown drain runs out: the final event says "cancelled".
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write_pieces({sse_head(true), http_chunk(text_event("Once upon")), http_chunk(text_event(" a", "cancelled")),
                        http_chunk("data: [DONE]\n\n"), http_chunk("")});
    });
    const moectl_result r = run_moectl({"generate", "Tell a story"}, server.path());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "Once upon a");
    EXPECT_NE(r.err.find("moed cancelled the generation before it finished"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("incomplete"), std::string::npos) << r.err;
}

TEST(moectl_output, an_unknown_finish_reason_exits_1_naming_it) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(sse_head(false) + text_event("x", "aborted\x1b[2J") + "data: [DONE]\n\n");
    });
    const moectl_result r = run_moectl({"generate", "hi"}, server.path());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("finish reason 'aborted\\x1b[2J'"), std::string::npos) << r.err;
    expect_inert(r.err, "stderr");
}

TEST(moectl_output, complete_finish_reasons_exit_0) {
    for (const char* reason : {"stop", "length"}) {
        fake_server server([&](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(sse_head(false) + text_event("done", reason) + "data: [DONE]\n\n");
        });
        const moectl_result r = run_moectl({"generate", "hi"}, server.path());
        EXPECT_EQ(r.exit_code, 0) << reason << ": " << r.err;
        EXPECT_EQ(r.out, "done");
        EXPECT_EQ(r.err, "");
    }
}

TEST(moectl_output, a_stream_cut_before_done_exits_3) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(sse_head(false) + text_event("Once upon"));  // then the connection closes
    });
    const moectl_result r = run_moectl({"generate", "Tell a story"}, server.path());
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_EQ(r.out, "Once upon");
    EXPECT_NE(r.err.find("before it finished (no [DONE])"), std::string::npos) << r.err;
}

TEST(moectl_output, a_reader_that_stops_reading_is_not_an_error) {
    // `moectl generate ... | head -c 4`: the stream is stopped on purpose.
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(sse_head(true));
        for (int i = 0; i < 1000; ++i) {
            if (!c.write(http_chunk(text_event("word ")))) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        c.write(http_chunk("data: [DONE]\n\n") + http_chunk(""));
    });
    const moectl_result r =
        run_moectl({"generate", "hi"}, server.path(), {}, [](const std::string& out) { return out.size() < 4; });
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
}

TEST(moectl_output, help_after_every_command) {
    // Nothing listens here: help must not try to connect.
    const std::string nowhere = (temp_dir() / "no-moed.sock").string();
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
        {{"generate", "--help"}, "generate [OPTIONS] PROMPT"},
        {{"generate", "-h"}, "generate [OPTIONS] PROMPT"},
        {{"generate", "--max-tokens", "4", "--help"}, "--max-tokens N"},
        {{"status", "--help"}, "usage: moectl [GLOBAL OPTIONS] status"},
        {{"models", "-h"}, "usage: moectl [GLOBAL OPTIONS] models"},
        {{"health", "--help"}, "usage: moectl [GLOBAL OPTIONS] health"},
        {{"profile", "--help"}, "profile create NAME --prompts FILE.jsonl"},
        {{"profile", "list", "--help"}, "usage: moectl [GLOBAL OPTIONS] profile list"},
        {{"profile", "show", "-h"}, "usage: moectl [GLOBAL OPTIONS] profile show NAME"},
        {{"profile", "create", "--help"}, "usage: moectl [GLOBAL OPTIONS] profile create NAME --prompts FILE.jsonl"},
        {{"profile", "delete", "--help"}, "usage: moectl [GLOBAL OPTIONS] profile delete NAME"},
        {{"help", "generate"}, "generate [OPTIONS] PROMPT"},
    };
    for (const auto& [args, want] : cases) {
        std::vector<std::string> argv{"--socket", nowhere};
        argv.insert(argv.end(), args.begin(), args.end());
        const moectl_result r = run_moectl(argv);
        const std::string what = ::testing::PrintToString(args);
        EXPECT_EQ(r.exit_code, 0) << what << ": " << r.err;
        EXPECT_NE(r.out.find(want), std::string::npos) << what << ":\n" << r.out;
        EXPECT_NE(r.out.find("Exit codes:"), std::string::npos) << what << ":\n" << r.out;
        EXPECT_EQ(r.err, "") << what;
    }
    // After "--" it is a prompt word, not a request for help.
    const moectl_result word = run_moectl({"--socket", nowhere, "generate", "--", "--help"});
    EXPECT_EQ(word.exit_code, 3) << word.err;
    // An unknown command's help is still a usage error.
    EXPECT_EQ(run_moectl({"frobnicate", "--help"}).exit_code, 2);
}

TEST(moectl_output, input_that_is_not_utf8_is_a_usage_error_naming_it) {
    std::atomic<int> contacted{0};
    fake_server server([&](fake_connection& c) {
        ++contacted;
        c.read_request();
        c.write(json_response(R"({"error":{"type":"x","message":"should not be asked"}})", 400, "Bad Request"));
    });
    struct input_case {
        std::vector<std::string> args;
        std::string stdin_text;
        std::string want;
    };
    const std::vector<input_case> cases{
        {{"generate", "-"}, "\xff\xfe", "the prompt read from stdin is not valid UTF-8: byte 0xff at offset 0"},
        {{"generate", "-"}, "hello \xc3\x28 world", "the prompt read from stdin is not valid UTF-8: byte 0xc3 at offset 6"},
        {{"generate", "--chat", "-"}, "ab\xed\xa0\x80", "the prompt read from stdin is not valid UTF-8: byte 0xed at offset 2"},
        {{"generate", "ok", "bad\xe2\x82"}, "", "the prompt is not valid UTF-8: byte 0xe2 at offset 6"},
        {{"generate", "--system", "\xc0\xaf", "hi"}, "", "--system is not valid UTF-8: byte 0xc0 at offset 0"},
        {{"generate", "--stop", "x\x80", "hi"}, "", "--stop is not valid UTF-8: byte 0x80 at offset 1"},
        {{"generate", "--model", "m\xf8", "hi"}, "", "--model is not valid UTF-8: byte 0xf8 at offset 1"},
    };
    for (const input_case& c : cases) {
        std::vector<std::string> argv{"--socket", server.path()};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        const moectl_result r = run_moectl(argv, {}, c.stdin_text);
        EXPECT_EQ(r.exit_code, 2) << c.want << ": " << r.err;
        EXPECT_NE(r.err.find(c.want), std::string::npos) << r.err;
        EXPECT_EQ(r.err.find("json.exception"), std::string::npos) << r.err;
        expect_inert(r.err, c.want);
    }
    // A prompt file line and a profile source.
    const std::string file = (temp_dir() / "bad-utf8.jsonl").string();
    { std::ofstream(file) << "{\"text\":\"fine\"}\n{\"text\":\"b\xff" "d\"}\n"; }
    const moectl_result f = run_moectl({"--socket", server.path(), "profile", "create", "c", "--prompts", file});
    EXPECT_EQ(f.exit_code, 2) << f.err;
    EXPECT_NE(f.err.find(file + ":2: not valid UTF-8: byte 0xff at offset 10"), std::string::npos) << f.err;
    const std::string good = (temp_dir() / "good.jsonl").string();
    { std::ofstream(good) << "{\"text\":\"fine\"}\n"; }
    const moectl_result src =
        run_moectl({"--socket", server.path(), "profile", "create", "c", "--prompts", good, "--source", "s\xfe"});
    EXPECT_EQ(src.exit_code, 2) << src.err;
    EXPECT_NE(src.err.find("--source is not valid UTF-8: byte 0xfe at offset 1"), std::string::npos) << src.err;
    EXPECT_EQ(contacted, 0);
}

}  // namespace
}  // namespace moed::test
