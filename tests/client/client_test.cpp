// Checks libmoeclient's C++ API against a scripted fake moed on a temporary Unix socket
// (fake_server.h): the requests it builds for completions and chat, whole answers, SSE
// streams however their bytes are split (mid-line, between CR and LF, one byte per write,
// chunked or closed-delimited), [DONE] and finish reasons, mid-stream error events, a
// callback that stops (the connection must close, which is how moed learns to cancel),
// error JSON mapped to client_error, connection failures with a clear message, timeouts,
// malformed and truncated answers, and status/models/health parsing, the status checked
// field by field against the wire type from common/status.h.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/default_paths.h"
#include "common/status.h"
#include "moed/client.hpp"
#include "tests/client/fake_server.h"

namespace moed {
namespace {

using nlohmann::json;
using test::fake_connection;
using test::fake_server;
using test::http_chunk;
using test::json_response;
using test::sse_head;

client make_client(const fake_server& server) { return client(server.path()); }

std::string completion_body() {
    return R"({"id":"cmpl-1","object":"text_completion","created":1,"model":"tinymoe",)"
           R"("choices":[{"index":0,"text":" Paris.","finish_reason":"stop"}],)"
           R"("usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}})";
}

// An SSE event carrying a completion chunk.
std::string text_event(std::string_view text, std::string_view finish = {}) {
    json chunk = {{"id", "cmpl-9"},
                  {"object", "text_completion"},
                  {"model", "tinymoe"},
                  {"choices", json::array({{{"index", 0}, {"text", text}, {"finish_reason", nullptr}}})}};
    if (!finish.empty()) chunk["choices"][0]["finish_reason"] = finish;
    return "data: " + chunk.dump() + "\n\n";
}

TEST(client, completion_request_and_response) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(completion_body()));
    });
    completion_request req;
    req.prompt = "The capital of France is";
    req.max_tokens = 8;
    req.temperature = 0.0;
    req.seed = 42;
    req.stop = {"\n"};
    auto r = make_client(server).complete(req);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->id, "cmpl-1");
    EXPECT_EQ(r->model, "tinymoe");
    EXPECT_EQ(r->text, " Paris.");
    EXPECT_EQ(r->finish_reason, "stop");
    EXPECT_EQ(r->usage.prompt_tokens, 5);
    EXPECT_EQ(r->usage.completion_tokens, 2);
    EXPECT_EQ(r->usage.total_tokens, 7);
    EXPECT_EQ(r->raw_json, completion_body());

    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0].method, "POST");
    EXPECT_EQ(requests[0].target, "/v1/completions");
    EXPECT_EQ(requests[0].headers.at("content-type"), "application/json");
    const json body = json::parse(requests[0].body);
    EXPECT_EQ(body["prompt"], "The capital of France is");
    EXPECT_EQ(body["max_tokens"], 8);
    EXPECT_EQ(body["temperature"], 0.0);
    EXPECT_EQ(body["seed"], 42);
    EXPECT_EQ(body["stop"], json::array({"\n"}));
    EXPECT_EQ(body["stream"], false);
    // Unset options are left to moed's defaults.
    EXPECT_FALSE(body.contains("model"));
    EXPECT_FALSE(body.contains("top_p"));
    EXPECT_FALSE(body.contains("messages"));
}

TEST(client, chat_goes_to_the_chat_endpoint) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(
            R"({"id":"chatcmpl-2","object":"chat.completion","model":"tinymoe","choices":[{"index":0,)"
            R"("message":{"role":"assistant","content":"Hello!"},"finish_reason":"length"}],)"
            R"("usage":{"prompt_tokens":9,"completion_tokens":3}})"));
    });
    completion_request req;
    req.model = "tinymoe";
    req.prompt = "ignored";
    req.messages = {{"system", "Be brief."}, {"user", "Hi"}};
    req.top_k = 40;
    req.top_p = 0.9;
    req.min_p = 0.05;
    auto r = make_client(server).complete(req);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->text, "Hello!");
    EXPECT_EQ(r->finish_reason, "length");
    EXPECT_EQ(r->usage.total_tokens, 12);  // filled in when moed leaves it out

    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0].target, "/v1/chat/completions");
    const json body = json::parse(requests[0].body);
    EXPECT_EQ(body["model"], "tinymoe");
    EXPECT_FALSE(body.contains("prompt"));
    ASSERT_EQ(body["messages"].size(), 2u);
    EXPECT_EQ(body["messages"][0]["role"], "system");
    EXPECT_EQ(body["messages"][1]["content"], "Hi");
    EXPECT_EQ(body["top_k"], 40);
    EXPECT_DOUBLE_EQ(body["top_p"].get<double>(), 0.9);
    EXPECT_DOUBLE_EQ(body["min_p"].get<double>(), 0.05);
}

TEST(client, stream_events_split_anywhere) {
    // One stream, its bytes cut mid-field, between CR and LF, inside the JSON, with two
    // events in one write, a comment, CRLF and LF endings and a usage-only chunk.
    const std::string events = ": keep-alive comment\r\n\r\n" + text_event("Hel") + text_event("lo") +
                               "data: {\"id\":\"cmpl-9\",\"choices\":[{\"index\":0,\"text\":\" world\"}]}\r\n\r\n" +
                               text_event("", "length") +
                               "data: {\"id\":\"cmpl-9\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                               "\"completion_tokens\":3,\"total_tokens\":6}}\n\n"
                               "data: [DONE]\n\n";
    // Cut between every CR and LF, inside a field name, inside the JSON, and in the middle
    // of "[DONE]"; the events in between stay together in one write.
    std::vector<std::size_t> cuts;
    for (std::size_t at = events.find("\r\n"); at != std::string::npos; at = events.find("\r\n", at + 1)) {
        cuts.push_back(at + 1);
    }
    cuts.push_back(events.find("data: {") + 2);
    cuts.push_back(events.find("\"lo\"") + 2);
    cuts.push_back(events.find("[DONE]") + 3);
    std::sort(cuts.begin(), cuts.end());
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        std::vector<std::string> pieces = {sse_head(/*chunked=*/false)};
        std::size_t at = 0;
        for (std::size_t cut : cuts) {
            pieces.push_back(events.substr(at, cut - at));
            at = cut;
        }
        pieces.push_back(events.substr(at));
        c.write_pieces(pieces);
    });
    completion_request req;
    req.prompt = "x";
    std::vector<std::string> seen;
    auto r = make_client(server).stream(req, [&](std::string_view piece) {
        seen.emplace_back(piece);
        return true;
    });
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(seen, (std::vector<std::string>{"Hel", "lo", " world"}));
    EXPECT_EQ(r->text, "Hello world");
    EXPECT_EQ(r->finish_reason, "length");
    EXPECT_EQ(r->id, "cmpl-9");
    EXPECT_EQ(r->model, "tinymoe");
    EXPECT_EQ(r->usage.total_tokens, 6);
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(json::parse(requests[0].body)["stream"], true);
    EXPECT_EQ(requests[0].headers.at("accept"), "text/event-stream");
}

TEST(client, stream_one_byte_per_write_chunked_chat) {
    // Chat deltas (the first carries only the role) in chunked encoding, each chunk a
    // separate write of one byte of the event stream.
    const std::string events =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\r"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":\"stop\"}]}\n\n"
        "data: [DONE]\n\n";
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        std::vector<std::string> pieces = {sse_head(/*chunked=*/true)};
        for (char ch : events) pieces.push_back(http_chunk(std::string(1, ch)));
        pieces.push_back(http_chunk(""));
        for (const std::string& p : pieces) c.write(p);  // no pauses: many tiny chunks
    });
    completion_request req;
    req.messages = {{"user", "hello"}};
    std::string text;
    auto r = make_client(server).stream(req, [&](std::string_view piece) {
        text += piece;
        return true;
    });
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(text, "Hi there");
    EXPECT_EQ(r->text, "Hi there");
    EXPECT_EQ(r->finish_reason, "stop");
    EXPECT_EQ(server.requests().at(0).target, "/v1/chat/completions");
}

TEST(client, stream_callback_returning_false_closes_the_connection) {
    std::promise<bool> closed;
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(sse_head(false) + text_event("first"));
        // moed would go on generating; the fake waits to see the client hang up.
        closed.set_value(c.wait_peer_closed());
    });
    completion_request req;
    req.prompt = "x";
    int calls = 0;
    auto r = make_client(server).stream(req, [&](std::string_view) {
        ++calls;
        return false;
    });
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(r->text, "first");
    EXPECT_EQ(r->finish_reason, "cancelled");
    EXPECT_TRUE(closed.get_future().get()) << "the client did not close the connection";
}

TEST(client, stream_errors) {
    // An error status before the stream starts.
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(json_response(R"j({"error":{"type":"rate_limit_error","message":"the queue is full (64 waiting)"}})j",
                                  429, "Too Many Requests"));
        });
        completion_request req;
        req.prompt = "x";
        auto r = make_client(server).stream(req, [](std::string_view) { return true; });
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::http);
        EXPECT_EQ(r.error().http_status, 429);
        EXPECT_EQ(r.error().type, "rate_limit_error");
        EXPECT_NE(r.error().message.find("the queue is full (64 waiting)"), std::string::npos) << r.error().message;
    }
    // An error event mid-stream.
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(sse_head(false) + text_event("a") +
                    "data: {\"error\":{\"type\":\"server_error\",\"message\":\"I/O error reading expert 3.7\","
                    "\"code\":500}}\n\ndata: [DONE]\n\n");
        });
        completion_request req;
        req.prompt = "x";
        auto r = make_client(server).stream(req, [](std::string_view) { return true; });
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::http);
        EXPECT_EQ(r.error().type, "server_error");
        EXPECT_EQ(r.error().http_status, 500);
        EXPECT_NE(r.error().message.find("I/O error reading expert 3.7"), std::string::npos) << r.error().message;
    }
    // The stream ends without [DONE] or a finish reason: cut short.
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(sse_head(false) + text_event("a") + "data: {\"choi");
        });
        completion_request req;
        req.prompt = "x";
        auto r = make_client(server).stream(req, [](std::string_view) { return true; });
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::connection);
        EXPECT_NE(r.error().message.find("[DONE]"), std::string::npos) << r.error().message;
    }
    // A finish reason without [DONE] is a complete answer.
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(sse_head(false) + text_event("a", "stop"));
        });
        completion_request req;
        req.prompt = "x";
        auto r = make_client(server).stream(req, nullptr);
        ASSERT_TRUE(r) << r.error().message;
        EXPECT_EQ(r->text, "a");
        EXPECT_EQ(r->finish_reason, "stop");
    }
    // An event that is not JSON.
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(sse_head(false) + "data: not json\n\n");
        });
        completion_request req;
        req.prompt = "x";
        auto r = make_client(server).stream(req, nullptr);
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::protocol);
    }
}

TEST(client, error_json_maps_to_client_error) {
    const std::string body = R"({"error":{"type":"invalid_request_error","message":"'max_tokens' must be at least 1"}})";
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body, 400, "Bad Request"));
    });
    completion_request req;
    req.prompt = "x";
    req.max_tokens = 0;
    auto r = make_client(server).complete(req);
    ASSERT_FALSE(r);
    const client_error& e = r.error();
    EXPECT_EQ(e.code, client_errc::http);
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_EQ(e.message, "moed answered 400 Bad Request (invalid_request_error): 'max_tokens' must be at least 1");
    EXPECT_EQ(e.body, body);
    EXPECT_STREQ(client_errc_name(e.code), "http");
}

TEST(client, error_without_json_keeps_the_text) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(test::http_response(503, "Service Unavailable", "text/plain", "shutting down\n"));
    });
    auto r = make_client(server).status();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, client_errc::http);
    EXPECT_EQ(r.error().http_status, 503);
    EXPECT_EQ(r.error().message, "moed answered 503 Service Unavailable: shutting down");
}

TEST(client, not_running_says_so) {
    const std::string missing = (test::temp_dir() / "no-such.sock").string();
    auto r = client(missing).health();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, client_errc::not_running);
    EXPECT_EQ(r.error().message, "moed is not running: cannot connect to " + missing + " (No such file or directory)");

    // A socket file that nobody listens on (a crashed daemon's leftover).
    const std::string stale = (test::temp_dir() / "stale.sock").string();
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", stale.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
    auto s = client(stale).status();
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, client_errc::not_running);
    EXPECT_EQ(s.error().message, "moed is not running: cannot connect to " + stale + " (Connection refused)");

    completion_request req;
    req.prompt = "x";
    auto st = client(missing).stream(req, [](std::string_view) { return true; });
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code, client_errc::not_running);

    auto long_path = client(std::string(200, 'x')).health();
    ASSERT_FALSE(long_path);
    EXPECT_EQ(long_path.error().code, client_errc::unreachable);
    EXPECT_NE(long_path.error().message.find("longer than 107 bytes"), std::string::npos);
}

TEST(client, read_timeout) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.wait_peer_closed();  // answer nothing
    });
    client_options o;
    o.socket_path = server.path();
    o.read_timeout = std::chrono::milliseconds(100);
    auto r = client(o).models();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, client_errc::timeout);
    EXPECT_NE(r.error().message.find("read timeout"), std::string::npos) << r.error().message;
}

TEST(client, malformed_and_truncated_answers) {
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(json_response("{\"choices\": 3}"));
        });
        completion_request req;
        req.prompt = "x";
        auto r = make_client(server).complete(req);
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::protocol);
    }
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\":");
        });
        auto r = make_client(server).models();
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::connection);
    }
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write("SMTP ready\r\n\r\n");
        });
        auto r = make_client(server).models();
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::protocol);
    }
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(json_response(std::string(5000, ' ') + "{}"));
        });
        client_options o;
        o.socket_path = server.path();
        o.max_response_bytes = 1000;
        auto r = client(o).get_json("/v1/status");
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::protocol);
    }
}

TEST(client, status_copies_every_field) {
    server_status s;
    s.version = "0.1.0";
    s.uptime_s = 3725.5;
    s.model = {"tinymoe", "/m/tiny.gguf", "qwen3moe", 4, 8, 2, 256, 512, 1000, 400, 600};
    s.threads = 16;
    s.isa = "avx512";
    s.queue_waiting = 1;
    s.queue_capacity = 64;
    s.running_sequences = 2;
    s.max_sequences = 8;
    s.max_batch_tokens = 256;
    s.steps_total = 11;
    s.requests_total = 12;
    s.requests_failed = 13;
    s.requests_cancelled = 14;
    s.prompt_tokens_total = 15;
    s.generated_tokens_total = 16;
    s.decode_tokens_per_s = 17.5;
    s.requests = {{"cmpl-a", "decode", 5, 6, 7, "pid=1 uid=2 gid=3"}, {"cmpl-b", "queued", 8, 0, 9, "pid=4"}};
    expert_cache_stats t;
    t.io_mode = "uring_direct";
    t.queue_depth = 32;
    t.expert_bytes_total = 123456;
    t.host = {"host", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.5, 11.5, {12, 13.5, 14.5, 15.5, 16.5}};
    t.nvme = {"nvme", 21, 22, 23, 24, 25, 26, 27, 28, 29, 30.5, 31.5, {32, 33.5, 34.5, 35.5, 36.5}};
    t.layer_residency = {"#.+~", "..##"};
    s.tiers = t;
    const std::string body = json(s).dump();
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body));
    });
    auto r = make_client(server).status();
    ASSERT_TRUE(r) << r.error().message;
    const daemon_status& p = *r;
    EXPECT_EQ(server.requests().at(0).target, "/v1/status");
    EXPECT_EQ(p.version, "0.1.0");
    EXPECT_DOUBLE_EQ(p.uptime_s, 3725.5);
    EXPECT_EQ(p.model.id, "tinymoe");
    EXPECT_EQ(p.model.path, "/m/tiny.gguf");
    EXPECT_EQ(p.model.architecture, "qwen3moe");
    EXPECT_EQ(p.model.n_layer, 4u);
    EXPECT_EQ(p.model.n_expert, 8u);
    EXPECT_EQ(p.model.n_expert_used, 2u);
    EXPECT_EQ(p.model.n_ctx, 256);
    EXPECT_EQ(p.model.n_vocab, 512);
    EXPECT_EQ(p.model.file_bytes, 1000u);
    EXPECT_EQ(p.model.dense_bytes, 400u);
    EXPECT_EQ(p.model.expert_bytes, 600u);
    EXPECT_EQ(p.threads, 16u);
    EXPECT_EQ(p.isa, "avx512");
    EXPECT_EQ(p.queue_waiting, 1u);
    EXPECT_EQ(p.queue_capacity, 64u);
    EXPECT_EQ(p.running_sequences, 2u);
    EXPECT_EQ(p.max_sequences, 8u);
    EXPECT_EQ(p.max_batch_tokens, 256u);
    EXPECT_EQ(p.steps_total, 11u);
    EXPECT_EQ(p.requests_total, 12u);
    EXPECT_EQ(p.requests_failed, 13u);
    EXPECT_EQ(p.requests_cancelled, 14u);
    EXPECT_EQ(p.prompt_tokens_total, 15u);
    EXPECT_EQ(p.generated_tokens_total, 16u);
    EXPECT_DOUBLE_EQ(p.decode_tokens_per_s, 17.5);
    ASSERT_EQ(p.requests.size(), 2u);
    EXPECT_EQ(p.requests[0].id, "cmpl-a");
    EXPECT_EQ(p.requests[0].state, "decode");
    EXPECT_EQ(p.requests[0].prompt_tokens, 5);
    EXPECT_EQ(p.requests[0].generated_tokens, 6);
    EXPECT_EQ(p.requests[0].max_tokens, 7);
    EXPECT_EQ(p.requests[0].peer, "pid=1 uid=2 gid=3");
    EXPECT_EQ(p.requests[1].state, "queued");
    ASSERT_TRUE(p.tiers);
    EXPECT_EQ(p.tiers->io_mode, "uring_direct");
    EXPECT_EQ(p.tiers->queue_depth, 32u);
    EXPECT_EQ(p.tiers->expert_bytes_total, 123456u);
    EXPECT_EQ(p.tiers->layer_residency, (std::vector<std::string>{"#.+~", "..##"}));
    const std::pair<const daemon_tier*, const tier_stats*> tiers[] = {{&p.tiers->host, &t.host},
                                                                      {&p.tiers->nvme, &t.nvme}};
    for (const auto& [got, want] : tiers) {
        EXPECT_EQ(got->name, want->name);
        EXPECT_EQ(got->capacity_bytes, want->capacity_bytes);
        EXPECT_EQ(got->capacity_experts, want->capacity_experts);
        EXPECT_EQ(got->resident_bytes, want->resident_bytes);
        EXPECT_EQ(got->resident_experts, want->resident_experts);
        EXPECT_EQ(got->hits, want->hits);
        EXPECT_EQ(got->misses, want->misses);
        EXPECT_EQ(got->evictions, want->evictions);
        EXPECT_EQ(got->bytes_read, want->bytes_read);
        EXPECT_EQ(got->read_errors, want->read_errors);
        EXPECT_DOUBLE_EQ(got->read_seconds, want->read_seconds);
        EXPECT_DOUBLE_EQ(got->read_bytes_per_s, want->read_bytes_per_s);
        EXPECT_EQ(got->load_latency.count, want->load_latency.count);
        EXPECT_DOUBLE_EQ(got->load_latency.p50_us, want->load_latency.p50_us);
        EXPECT_DOUBLE_EQ(got->load_latency.p90_us, want->load_latency.p90_us);
        EXPECT_DOUBLE_EQ(got->load_latency.p99_us, want->load_latency.p99_us);
        EXPECT_DOUBLE_EQ(got->load_latency.max_us, want->load_latency.max_us);
    }
}

// status(extra) fills what daemon_status leaves out (the host slab's slot classes, KV
// positions) from the same answer, and leaves them empty when moed sends none.
TEST(client, status_extra_has_slot_classes_and_kv_positions) {
    server_status s;
    s.model.id = "m";
    expert_cache_stats t;
    t.host.name = "host";
    t.slot_classes = {{4096, 3, {0, 1}, 2}, {8192, 5, {2}, 0}};
    s.tiers = t;
    s.memory.kv_cache_cells = 1024;
    s.memory.kv_cache_cells_used = 77;
    const std::string body = json(s).dump();
    int answered = 0;  // the server's thread only
    fake_server server([&](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        c.write(json_response(answered++ == 0 ? body : std::string(R"({"model":{"id":"m"}})")));
    });
    daemon_status_extra extra;
    auto r = make_client(server).status(extra);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->model.id, "m");
    ASSERT_EQ(extra.slot_classes.size(), 2u);
    EXPECT_EQ(extra.slot_classes[0].slot_bytes, 4096u);
    EXPECT_EQ(extra.slot_classes[0].slots, 3u);
    EXPECT_EQ(extra.slot_classes[0].layers, (std::vector<std::uint32_t>{0, 1}));
    EXPECT_EQ(extra.slot_classes[0].resident, 2u);
    EXPECT_EQ(extra.slot_classes[1].slot_bytes, 8192u);
    EXPECT_EQ(extra.slot_classes[1].layers, (std::vector<std::uint32_t>{2}));
    EXPECT_EQ(extra.kv_cache_cells, 1024u);
    EXPECT_EQ(extra.kv_cache_cells_used, 77u);

    // An older moed: nothing beyond daemon_status, and the old values do not linger.
    auto older = make_client(server).status(extra);
    ASSERT_TRUE(older) << older.error().message;
    EXPECT_TRUE(extra.slot_classes.empty());
    EXPECT_EQ(extra.kv_cache_cells, 0u);
}

TEST(client, status_without_tiers_and_with_wrong_types) {
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(json_response(R"({"version":"0.2.0","future_field":[1,2]})"));
        });
        auto r = make_client(server).status();
        ASSERT_TRUE(r) << r.error().message;
        EXPECT_EQ(r->version, "0.2.0");
        EXPECT_FALSE(r->tiers);
    }
    {
        fake_server server([](fake_connection& c) {
            ASSERT_TRUE(c.read_request());
            c.write(json_response(R"({"version":7})"));
        });
        auto r = make_client(server).status();
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, client_errc::protocol);
    }
}

TEST(client, models_health_and_raw_json) {
    fake_server server([](fake_connection& c) {
        auto req = c.read_request();
        ASSERT_TRUE(req);
        if (req->target == "/v1/models") {
            c.write(json_response(R"({"object":"list","data":[{"id":"tinymoe","object":"model","created":1700000000,)"
                                  R"("owned_by":"moed"},{"id":"other"}]})"));
        } else if (req->target == "/healthz") {
            c.write(test::http_response(200, "OK", "text/plain", "ok\n"));
        } else {
            c.write(json_response(R"({"error":{"type":"not_found","message":"no such endpoint"}})", 404, "Not Found"));
        }
    });
    const client c = make_client(server);
    auto models = c.models();
    ASSERT_TRUE(models) << models.error().message;
    ASSERT_EQ(models->size(), 2u);
    EXPECT_EQ((*models)[0].id, "tinymoe");
    EXPECT_EQ((*models)[0].owned_by, "moed");
    EXPECT_EQ((*models)[0].created, 1700000000);
    EXPECT_EQ((*models)[1].id, "other");

    auto health = c.health();
    ASSERT_TRUE(health) << health.error().message;
    EXPECT_EQ(*health, "ok");

    auto missing = c.get_json("/v1/nothing");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().http_status, 404);
    EXPECT_EQ(missing.error().type, "not_found");

    auto bad_target = c.get_json("v1/status");
    ASSERT_FALSE(bad_target);
    EXPECT_EQ(bad_target.error().code, client_errc::invalid_argument);
    EXPECT_EQ(server.connections(), 3);  // the bad target never connected
}

TEST(client, raw_json_requests) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(completion_body()));
    });
    const client c = make_client(server);
    auto r = c.complete_json(R"({"messages":[{"role":"user","content":"hi"}],"stream":true,"extra":1})");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(*r, completion_body());
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0].target, "/v1/chat/completions");
    const json body = json::parse(requests[0].body);
    EXPECT_EQ(body["stream"], false);
    EXPECT_EQ(body["extra"], 1);  // passed through

    auto bad = c.complete_json("[1,2]");
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().code, client_errc::invalid_argument);
    auto not_json = c.complete_json("{");
    ASSERT_FALSE(not_json);
    EXPECT_EQ(not_json.error().code, client_errc::invalid_argument);

    // Text that is not UTF-8 cannot become JSON: refused before connecting.
    completion_request req;
    req.prompt = "\xff\xfe";
    auto invalid = c.complete(req);
    ASSERT_FALSE(invalid);
    EXPECT_EQ(invalid.error().code, client_errc::invalid_argument);
    EXPECT_NE(invalid.error().message.find("not valid UTF-8 (invalid UTF-8 byte at index 0: 0xFF)"), std::string::npos)
        << invalid.error().message;
    EXPECT_EQ(invalid.error().message.find("json.exception"), std::string::npos) << invalid.error().message;
    EXPECT_EQ(server.connections(), 1);
}

TEST(client, default_socket_path_follows_the_environment) {
    const char* saved = std::getenv("MOED_SOCKET");
    const std::string saved_value = saved ? saved : "";
    ::unsetenv("MOED_SOCKET");
    // Without MOED_SOCKET: the rule of common/default_paths.h (root: always the system socket;
    // another user: their own moed's socket when it exists).
    const std::string fallback = client_default_socket(path_environment::of_process());
    if (::geteuid() == 0) {
        EXPECT_EQ(fallback, "/run/moed/moed.sock");
    }
    EXPECT_EQ(default_socket_path(), fallback);
    EXPECT_EQ(client().socket_path(), fallback);
    ::setenv("MOED_SOCKET", "/tmp/elsewhere.sock", 1);
    EXPECT_EQ(default_socket_path(), "/tmp/elsewhere.sock");
    EXPECT_EQ(client("").socket_path(), "/tmp/elsewhere.sock");
    EXPECT_EQ(client("/x.sock").socket_path(), "/x.sock");
    if (saved) ::setenv("MOED_SOCKET", saved_value.c_str(), 1);
    else ::unsetenv("MOED_SOCKET");
    EXPECT_STREQ(client_version(), "0.2.0");
}

}  // namespace
}  // namespace moed
