// Checks the HTTP layer of moed (daemon/http_server.h, job_channel, listener) in-process,
// with a fake engine in place of the batch loop (tests/daemon/http_server_fixture.h).
// Checked over a real Unix socket with a Beast client: every endpoint, status code and
// error message; what the engine receives (templated and tokenized prompt, limits, seeds,
// peer credentials, the chat template's options); non-stream and SSE framing; a chat reply's
// reasoning (Qwen3 <think>, gpt-oss channels) as reasoning_content in both; keep-alive; a client that disconnects
// mid-stream or mid-request gets its job cancelled; engine failures; the connection
// limit; shutdown closing idle connections; the listener's stale/live socket rules.
// Waits are on condition variables; nothing asserts on wall time.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "daemon/listener.h"
#include "tests/daemon/http_server_fixture.h"

namespace moed::daemon {
namespace {

TEST_F(HttpServer, HealthModelsStatusMetrics) {
    start();
    auto h = get("/healthz");
    EXPECT_EQ(h.status, 200u);
    EXPECT_EQ(h.json()["status"], "ok");
    auto m = get("/v1/models");
    EXPECT_EQ(m.status, 200u);
    EXPECT_EQ(m.json()["data"][0]["id"], "tinymoe");
    auto s = get("/v1/status?verbose=1");
    EXPECT_EQ(s.status, 200u);
    EXPECT_EQ(s.json()["model"]["id"], "tinymoe");
    EXPECT_EQ(s.json()["queue_capacity"], 4);
    auto x = get("/metrics");
    EXPECT_EQ(x.status, 200u);
    EXPECT_EQ(x.content_type, "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_NE(x.body.find("moed_queue_capacity 4\n"), std::string::npos);
    EXPECT_NE(x.body.find("moed_http_responses_total{code=\"200\"}"), std::string::npos);
}

TEST_F(HttpServer, ErrorsCarryStatusTypeAndMessage) {
    start();
    expect_error(get("/v1/nothing"), 404, "not_found_error", "no such endpoint: /v1/nothing");
    auto wrong_method = get("/v1/completions");
    expect_error(wrong_method, 405, "method_not_allowed_error", "/v1/completions does not accept GET; use POST");
    EXPECT_EQ(wrong_method.allow, "POST");
    expect_error(post("/healthz", "{}"), 405, "method_not_allowed_error", "/healthz does not accept POST; use GET");
    auto bad_json = post("/v1/completions", "{\"prompt\": ");
    EXPECT_EQ(bad_json.status, 400u);
    EXPECT_EQ(bad_json.error_type(), "invalid_request_error");
    EXPECT_EQ(bad_json.error_message().rfind("malformed JSON: ", 0), 0u) << bad_json.body;
    expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":"5"})"), 400, "invalid_request_error",
                 "max_tokens: expected an integer, got string");
    expect_error(post("/v1/chat/completions", R"({"messages":"hi"})"), 400, "invalid_request_error",
                 "messages: expected an array, got string");
    expect_error(post("/v1/completions", R"({"model":"gpt-4","prompt":"x"})"), 404, "not_found_error",
                 "model 'gpt-4' is not served; available: tinymoe");
    expect_error(post("/v1/completions", R"({"prompt":"x","max_tokens":101})"), 400, "invalid_request_error",
                 "max_tokens: 101 is out of range [1, 100]");
    expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"robot","content":"x"}]})"), 400,
                 "invalid_request_error", "messages[0] has role \"robot\"; the roles are system, user, assistant and tool");
    // The context holds 64 tokens per sequence in this fixture.
    std::string long_prompt;
    for (int i = 0; i < 80; ++i) long_prompt += " word";
    auto too_long = post("/v1/completions", R"({"prompt":")" + long_prompt + R"("})");
    EXPECT_EQ(too_long.status, 400u);
    EXPECT_NE(too_long.error_message().find("leave no room in the context of 64 tokens"), std::string::npos)
        << too_long.body;
    const std::size_t n_hi = model_->vocab().encode("Hi", true).size() + (model_->vocab().add_bos() ? 1 : 0);
    expect_error(post("/v1/completions", R"({"prompt":"Hi","max_tokens":64})"), 400, "invalid_request_error",
                 fmt::format("max_tokens: the prompt ({} tokens) plus max_tokens (64) exceeds the context of 64 tokens "
                             "per sequence",
                             n_hi));
    EXPECT_TRUE(engine_.jobs().empty()) << "no bad request reaches the engine";
}

TEST_F(HttpServer, OversizeBodyIs413AndHeadersOver16KiBAre431) {
    http_options o;
    o.max_body_bytes = 4096;
    start(o);
    const std::string big = R"({"prompt":")" + std::string(100000, 'a') + R"("})";
    expect_error(post("/v1/completions", big), 413, "request_too_large_error",
                 "request body is larger than the 4096 bytes allowed (http.max_body_bytes)");
    http_connection c(socket_path_);
    auto r = c.request(http::verb::get, "/healthz", "", {{"X-Big", std::string(20000, 'h')}});
    expect_error(r, 431, "request_too_large_error", "request headers are larger than the 16384 bytes allowed");
    EXPECT_EQ(get("/healthz").status, 200u) << "the server still serves";
}

TEST_F(HttpServer, MalformedHttpIs400) {
    start();
    http_connection c(socket_path_);
    ASSERT_TRUE(c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"));
    auto r = c.read_reply();
    EXPECT_EQ(r.status, 400u);
    EXPECT_EQ(r.error_message().rfind("malformed HTTP request: ", 0), 0u) << r.body;
}

TEST_F(HttpServer, ExpectContinueGetsItsGoAhead) {
    start();
    http_connection c(socket_path_);
    const std::string body = R"({"prompt":"Hi"})";
    ASSERT_TRUE(c.send_raw(fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                       "Content-Length: {}\r\n\r\n",
                                       body.size())));
    EXPECT_EQ(c.read_until("\r\n\r\n"), "HTTP/1.1 100 Continue\r\n\r\n");
    ASSERT_TRUE(c.send_raw(body));
    auto r = c.read_reply();
    EXPECT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.json()["choices"][0]["text"], "Hello world");
}

TEST_F(HttpServer, ChatWithAnUnsupportedTemplateIs501) {
    start({}, [](server_context& ctx) {
        ctx.chat.reset();
        ctx.chat_error = "chat completions are not available for this model: m.gguf: the chat template is of a "
                         "family moed does not support";
    });
    expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}]})"), 501,
                 "not_supported_error",
                 "chat completions are not available for this model: m.gguf: the chat template is of a family moed "
                 "does not support");
    EXPECT_EQ(post("/v1/completions", R"({"prompt":"x"})").status, 200u) << "completions still work";
}

TEST_F(HttpServer, QueueFullIs429AndShuttingDownIs503) {
    start();
    engine_.set_submit_error(error{errc::out_of_memory, "queue full"});
    expect_error(post("/v1/completions", R"({"prompt":"x"})"), 429, "rate_limit_error",
                 "the request queue is full (engine.queue_length is 4); retry later");
    engine_.set_submit_error(error{errc::cancelled, "stopping"});
    expect_error(post("/v1/completions", R"({"prompt":"x"})"), 503, "unavailable_error", "the server is shutting down");
    engine_.set_submit_error(error{errc::invalid_argument, "stop[0]: not valid UTF-8"});
    expect_error(post("/v1/completions", R"({"prompt":"x"})"), 400, "invalid_request_error", "stop[0]: not valid UTF-8");
}

TEST_F(HttpServer, CompletionAndWhatTheEngineReceives) {
    start();
    auto r = post("/v1/completions", R"({"model":"tinymoe","prompt":"Hi","stop":["\n"],"temperature":0,"top_k":5})");
    ASSERT_EQ(r.status, 200u) << r.body;
    auto j = r.json();
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "tinymoe");
    EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
    EXPECT_EQ(j["choices"][0]["text"], "Hello world");
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
    EXPECT_EQ(j["usage"]["completion_tokens"], 3);
    EXPECT_EQ(j["usage"]["total_tokens"], 6);

    auto jobs = engine_.jobs();
    ASSERT_EQ(jobs.size(), 1u);
    const job_params& p = jobs[0].params;
    EXPECT_EQ(p.prompt, model_->vocab().encode("Hi", true));
    EXPECT_EQ(p.max_tokens, 20) << "the configured default, within the context";
    EXPECT_EQ(p.stop, (std::vector<std::string>{"\n"}));
    EXPECT_FLOAT_EQ(p.sampling.temperature, 0.0f);
    EXPECT_EQ(p.sampling.top_k, 5);
    EXPECT_TRUE(p.stop_at_eog);
    EXPECT_EQ(p.id, j["id"]);
    EXPECT_EQ(p.peer, fmt::format("pid={} uid={} gid={}", ::getpid(), ::getuid(), ::getgid()));

    // Without a seed each request draws its own; with one it is passed through.
    ASSERT_EQ(post("/v1/completions", R"({"prompt":"Hi"})").status, 200u);
    ASSERT_EQ(post("/v1/completions", R"({"prompt":"Hi","seed":7,"ignore_eos":true})").status, 200u);
    jobs = engine_.jobs();
    ASSERT_EQ(jobs.size(), 3u);
    EXPECT_NE(jobs[0].params.sampling.seed, jobs[1].params.sampling.seed);
    EXPECT_EQ(jobs[2].params.sampling.seed, 7u);
    EXPECT_FALSE(jobs[2].params.stop_at_eog);
}

TEST_F(HttpServer, ChatIsTemplatedAndTokenizedWithSpecialTokens) {
    start();
    engine_.script({"Hi", "!"}, "stop");
    auto r = post("/v1/chat/completions", R"({"messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]})");
    ASSERT_EQ(r.status, 200u) << r.body;
    auto j = r.json();
    EXPECT_EQ(j["object"], "chat.completion");
    EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
    EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
    EXPECT_EQ(j["choices"][0]["message"]["content"], "Hi!");
    EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
    // The template's own encode(): markers as control tokens, message contents as plain text.
    auto ids = engine::chat_template::chatml().encode(model_->vocab(), {{"system", "S"}, {"user", "U"}});
    ASSERT_TRUE(ids.has_value());
    auto jobs = engine_.jobs();
    ASSERT_EQ(jobs.size(), 1u);
    EXPECT_EQ(jobs[0].params.prompt, *ids);
}

// A model's chat template from the engine's fixtures (the real Jinja text).
engine::chat_template fixture_chat_template(const std::string& name) {
    const auto path = std::filesystem::path(test::tests_dir()) / "engine" / "fixtures" / "chat" / (name + ".jinja");
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    auto t = engine::chat_template::detect(text.str(), path.string());
    EXPECT_TRUE(t) << t.error().message;
    return t ? *t : engine::chat_template::chatml();
}

TEST_F(HttpServer, ChatReasoningIsReasoningContentInBothModes) {
    const engine::chat_template qwen3 = fixture_chat_template("qwen3");
    start({}, [&](server_context& ctx) {
        ctx.chat = qwen3;
        ctx.n_ctx = 512;
    });
    // Markers cut across pieces, as tokens may cut them.
    engine_.script({"<think>", "\nThe user", " greets.\n</th", "ink>\n\n", "Hello", "!"}, "stop");
    const std::string body = R"({"messages":[{"role":"user","content":"Hi"}]})";
    auto r = post("/v1/chat/completions", body);
    ASSERT_EQ(r.status, 200u) << r.body;
    const auto message = r.json()["choices"][0]["message"];
    EXPECT_EQ(message["content"], "Hello!");
    EXPECT_EQ(message["reasoning_content"], "The user greets.");

    auto s = post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"Hi"}],"stream":true})");
    ASSERT_EQ(s.status, 200u) << s.body;
    const auto stream = test::read_stream(s.body);
    EXPECT_TRUE(stream.framing_ok && stream.done_last) << s.body;
    EXPECT_EQ(stream.text, "Hello!");
    EXPECT_EQ(stream.reasoning, "The user greets.");
    // No chunk carries markup, and only the first carries the role.
    const auto events = test::parse_sse(s.body);
    std::size_t with_role = 0;
    for (const std::string& data : events.data) {
        if (data == "[DONE]") continue;
        EXPECT_EQ(data.find("think>"), std::string::npos) << data;
        const auto chunk = nlohmann::json::parse(data);
        if (chunk["choices"][0]["delta"].contains("role")) ++with_role;
    }
    EXPECT_EQ(with_role, 1u);
    auto first = nlohmann::json::parse(events.data.front());
    EXPECT_EQ(first["choices"][0]["delta"]["reasoning_content"], "The user");
    EXPECT_TRUE(first.contains("moed"));

    // The prompt is the template's, with the generation prompt.
    auto expected = qwen3.prompt(model_->vocab(), {{"user", "Hi"}});
    ASSERT_TRUE(expected);
    auto jobs = engine_.jobs();
    ASSERT_EQ(jobs.size(), 2u);
    EXPECT_EQ(jobs[0].params.prompt, expected->tokens);
    EXPECT_EQ(jobs[0].params.kept_control_tokens, qwen3.reply_control_tokens(model_->vocab()));
}

TEST_F(HttpServer, ChatTemplateOptionsAndReasoningFormatNone) {
    const engine::chat_template qwen3 = fixture_chat_template("qwen3");
    start({}, [&](server_context& ctx) {
        ctx.chat = qwen3;
        ctx.n_ctx = 512;
    });
    engine_.script({"<think>\nA.\n</think>\n\n", "B"}, "stop");
    auto r = post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"Hi"}],"reasoning_format":"none",
                                              "chat_template_kwargs":{"enable_thinking":false,"other":1}})");
    ASSERT_EQ(r.status, 200u) << r.body;
    const auto message = r.json()["choices"][0]["message"];
    EXPECT_EQ(message["content"], "<think>\nA.\n</think>\n\nB");
    EXPECT_FALSE(message.contains("reasoning_content"));
    engine::chat_options off;
    off.enable_thinking = false;
    auto expected = qwen3.prompt(model_->vocab(), {{"user", "Hi"}}, off);
    ASSERT_TRUE(expected);
    auto jobs = engine_.jobs();
    ASSERT_EQ(jobs.size(), 1u);
    EXPECT_EQ(jobs[0].params.prompt, expected->tokens);
    EXPECT_TRUE(jobs[0].params.kept_control_tokens.empty()) << "nothing is split, nothing kept";

    expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"reasoning_format":"raw"})"),
                 400, "invalid_request_error", "reasoning_format: \"raw\" is not one of none, auto, deepseek");
    expect_error(post("/v1/chat/completions",
                      R"({"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"enable_thinking":1}})"),
                 400, "invalid_request_error", "chat_template_kwargs.enable_thinking: expected a boolean, got integer");
}

TEST_F(HttpServer, HarmonyChannelsSplitAndReasoningEffortReachesThePrompt) {
    const engine::chat_template harmony = fixture_chat_template("gpt-oss");
    start({}, [&](server_context& ctx) {
        ctx.chat = harmony;
        ctx.n_ctx = 512;
    });
    engine_.script({"<|channel|>analysis<|message|>", "Two and", " two.<|e", "nd|><|start|>assistant<|channel|>final",
                    "<|message|>", "4"},
                   "stop");
    auto r = post("/v1/chat/completions",
                  R"({"messages":[{"role":"user","content":"2+2?"}],"reasoning_effort":"high","stream":true})");
    ASSERT_EQ(r.status, 200u) << r.body;
    const auto stream = test::read_stream(r.body);
    EXPECT_EQ(stream.reasoning, "Two and two.");
    EXPECT_EQ(stream.text, "4");
    auto jobs = engine_.jobs();
    ASSERT_EQ(jobs.size(), 1u);
    engine::chat_options high;
    high.reasoning_effort = "high";
    auto expected = harmony.prompt(model_->vocab(), {{"user", "2+2?"}}, high);
    ASSERT_TRUE(expected);
    EXPECT_EQ(jobs[0].params.prompt, expected->tokens);
    auto medium = harmony.prompt(model_->vocab(), {{"user", "2+2?"}});
    ASSERT_TRUE(medium);
    EXPECT_NE(medium->tokens, expected->tokens);
    expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":"max"})"),
                 400, "invalid_request_error", "reasoning_effort: \"max\" is not one of low, medium, high");
    // A conversation the template refuses is the client's error.
    expect_error(post("/v1/chat/completions", R"({"messages":[{"role":"tool","content":"x"}]})"), 400,
                 "invalid_request_error",
                 "messages[0]: the model's chat template does not allow this: a tool message needs an earlier assistant "
                 "message with a tool call (gpt-oss template)");
}

TEST_F(HttpServer, ChatWithoutReasoningSyntaxStreamsEachPieceAsContent) {
    start();  // ChatML: no reasoning markup
    engine_.script({"<think>", "x</think>", "y"}, "stop");
    auto r = post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"stream":true})");
    ASSERT_EQ(r.status, 200u);
    const auto stream = test::read_stream(r.body);
    EXPECT_EQ(stream.text, "<think>x</think>y");
    EXPECT_EQ(stream.reasoning, "");
    EXPECT_EQ(stream.chunks, 4u) << "one chunk per piece, then the final chunk";
}

TEST_F(HttpServer, StreamsAreServerSentEventsEndingInDone) {
    start();
    auto r = post("/v1/completions", R"({"prompt":"Hi","stream":true,"stream_options":{"include_usage":true}})");
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.content_type, "text/event-stream");
    EXPECT_TRUE(r.chunked);
    auto s = test::read_stream(r.body);
    EXPECT_TRUE(s.framing_ok) << r.body;
    EXPECT_TRUE(s.done_last);
    EXPECT_EQ(s.text, "Hello world");
    EXPECT_EQ(s.finish_reason, "length");
    EXPECT_EQ(s.usage["completion_tokens"], 3);
    EXPECT_EQ(s.chunks, 5u) << "one chunk per piece, the final chunk, then the usage chunk";
    EXPECT_EQ(s.usage_chunks, 1u);

    auto c = post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"stream":true})");
    ASSERT_EQ(c.status, 200u);
    auto cs = test::read_stream(c.body);
    EXPECT_TRUE(cs.framing_ok && cs.done_last);
    EXPECT_EQ(cs.text, "Hello world");
    const auto events = test::parse_sse(c.body);
    auto first = nlohmann::json::parse(events.data.front());
    EXPECT_EQ(first["object"], "chat.completion.chunk");
    EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
}

TEST_F(HttpServer, KeepAliveServesManyRequestsOnOneConnection) {
    start();
    http_connection c(socket_path_);
    for (int i = 0; i < 3; ++i) {
        auto r = c.request(http::verb::post, "/v1/completions", R"({"prompt":"Hi","stream":true})");
        ASSERT_EQ(r.status, 200u) << i << r.error;
        EXPECT_TRUE(test::read_stream(r.body).done_last);
        auto h = c.request(http::verb::get, "/healthz");
        ASSERT_EQ(h.status, 200u) << i << h.error;
        auto e = c.request(http::verb::post, "/v1/completions", "nope");
        ASSERT_EQ(e.status, 400u) << i << e.error;
    }
}

TEST_F(HttpServer, ClientGoneMidStreamCancelsItsJob) {
    start();
    engine_.set_hold(true);
    http_connection c(socket_path_);
    const std::string body = R"({"prompt":"Hi","stream":true})";
    ASSERT_TRUE(c.send_raw(fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       "Content-Length: {}\r\n\r\n{}",
                                       body.size(), body)));
    const std::string head = c.read_until("data: ");
    EXPECT_NE(head.find("200 OK"), std::string::npos) << head;
    c.close();
    ASSERT_EQ(engine_.jobs().size(), 1u);
    EXPECT_TRUE(engine_.wait_cancelled(engine_.jobs()[0].id));
    EXPECT_EQ(get("/healthz").status, 200u);
}

TEST_F(HttpServer, ClientGoneDuringNonStreamRequestCancelsItsJob) {
    start();
    engine_.set_hold(true);
    {
        http_connection c(socket_path_);
        ASSERT_TRUE(c.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"prompt\":\"Hi\"}"));
        ASSERT_TRUE(engine_.wait_running(1));
        c.close();
    }
    ASSERT_EQ(engine_.jobs().size(), 1u);
    EXPECT_TRUE(engine_.wait_cancelled(engine_.jobs()[0].id));
}

TEST_F(HttpServer, EngineFailures) {
    start();
    engine_.set_fail("expert read failed: EIO");
    expect_error(post("/v1/completions", R"({"prompt":"Hi"})"), 500, "server_error",
                 "generation failed: expert read failed: EIO");
    auto s = post("/v1/completions", R"({"prompt":"Hi","stream":true})");
    ASSERT_EQ(s.status, 200u);
    auto r = test::read_stream(s.body);
    EXPECT_TRUE(r.framing_ok && r.done_last);
    EXPECT_EQ(r.error, "generation failed: expert read failed: EIO");
}

TEST_F(HttpServer, ConnectionLimit) {
    http_options o;
    o.max_connections = 1;
    start(o);
    http_connection first(socket_path_);
    ASSERT_EQ(first.request(http::verb::get, "/healthz").status, 200u);
    http_connection second(socket_path_);
    auto r = second.read_reply();
    expect_error(r, 503, "unavailable_error", "too many connections (http.max_connections is 1); retry later");
    EXPECT_EQ(r.retry_after, fmt::format("{}", retry_after_busy.count()));
    first.close();
    second.close();
}

TEST_F(HttpServer, ShutdownClosesIdleConnectionsAndStopsAccepting) {
    start();
    http_connection idle(socket_path_);
    ASSERT_EQ(idle.request(http::verb::get, "/healthz").status, 200u);
    on_io([this] { server_->begin_shutdown(); });
    EXPECT_TRUE(idle.closed_by_peer());
    http_connection late(socket_path_);
    EXPECT_FALSE(late.connected()) << "the acceptor is closed";
}

TEST(Listener, StaleSocketIsReplacedAndLiveOneRefused) {
    boost::asio::io_context io;
    const std::string path = (test::temp_dir() / "listener.sock").string();
    {
        // A socket file nobody accepts on: what a crashed daemon leaves.
        auto l = open_listener(io, {path, 0600, ""});
        ASSERT_TRUE(l.has_value()) << l.error().message;
        (*l)->file.release();  // the file stays behind
    }
    ASSERT_TRUE(std::filesystem::exists(path));
    auto again = open_listener(io, {path, 0640, ""});
    ASSERT_TRUE(again.has_value()) << again.error().message;
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
    auto third = open_listener(io, {path, 0600, ""});
    ASSERT_FALSE(third.has_value());
    EXPECT_EQ(third.error().message, "another moed is listening on " + path);
    again->reset();
    EXPECT_FALSE(std::filesystem::exists(path)) << "the daemon removes its socket file";

    const std::string plain = (test::temp_dir() / "plain-file").string();
    std::ofstream(plain) << "x";
    auto not_socket = open_listener(io, {plain, 0600, ""});
    ASSERT_FALSE(not_socket.has_value());
    EXPECT_EQ(not_socket.error().message, "socket " + plain + ": the path exists and is not a socket; not replacing it");
    auto bad_group = open_listener(io, {path, 0600, "no-such-group-moed"});
    ASSERT_FALSE(bad_group.has_value());
    EXPECT_EQ(bad_group.error().message, "socket.group: unknown group 'no-such-group-moed'");
    auto too_long = open_listener(io, {"/tmp/" + std::string(200, 'x'), 0600, ""});
    ASSERT_FALSE(too_long.has_value());
    EXPECT_NE(too_long.error().message.find("a Unix socket path holds at most 107"), std::string::npos);
}

}  // namespace
}  // namespace moed::daemon
