// Integration tests of the real `moed` binary on the bundled tinymoe model: each test starts
// the daemon on a temporary socket, waits for /healthz and talks HTTP/1.1 over the Unix
// socket (a small Beast client; curl too when it is installed). Checked: completions and
// chat, non-stream and streaming (SSE framing, [DONE]); 8 concurrent streaming clients each
// getting exactly what the same request gets alone (greedy); malformed JSON, wrong types,
// unknown model, oversize body, unknown path and method, queue full (status and message of
// every error); a client that disconnects mid-stream has its sequence freed and the daemon
// keeps serving; SIGTERM during generation ends the request cleanly and the daemon exits 0;
// a stale socket file is replaced and a live one refused; a bad config exits 2 naming the
// key; systemd readiness, status, watchdog pings and socket activation. Waits poll the daemon with a generous safety limit; nothing asserts on wall time.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/daemon/http_test_client.h"
#include "tests/daemon/moed_process.h"
#include "tests/support/spawn_daemon.h"
#include "tests/support/test_paths.h"

extern char** environ;

namespace moed::test {
namespace {

namespace http = boost::beast::http;
using json = nlohmann::json;

// The value of the sample `series` (name and labels exactly as written) in Prometheus text;
// NaN when there is none.
double sample_value(const std::string& text, const std::string& series) {
    const std::string head = series + " ";
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t end = std::min(text.find('\n', at), text.size());
        if (text.compare(at, head.size(), head) == 0) return std::strtod(text.c_str() + at + head.size(), nullptr);
        at = end + 1;
    }
    return std::nan("");
}

// The buckets of histogram `name` in order (the +Inf bucket last).
std::vector<double> bucket_counts(const std::string& text, const std::string& name) {
    std::vector<double> counts;
    const std::string head = name + "_bucket{le=\"";
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t end = std::min(text.find('\n', at), text.size());
        if (text.compare(at, head.size(), head) == 0) {
            const std::size_t value = text.rfind(' ', end);
            counts.push_back(std::strtod(text.c_str() + value + 1, nullptr));
        }
        at = end + 1;
    }
    return counts;
}

TEST(MoedIntegration, CompletionsAndChatStreamAndNot) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());

    auto plain = post(moed.socket(), "/v1/completions", completion_body("int main(", 16, false));
    ASSERT_EQ(plain.status, 200u) << plain.body;
    EXPECT_EQ(plain.content_type, "application/json");
    auto j = plain.json();
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "tinymoe");
    EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
    EXPECT_GT(j["created"].get<std::int64_t>(), 0);
    const std::string text = j["choices"][0]["text"];
    const std::string finish = j["choices"][0]["finish_reason"];
    EXPECT_TRUE(finish == "length" || finish == "stop") << finish;
    const auto& usage = j["usage"];
    EXPECT_GT(usage["prompt_tokens"].get<int>(), 0);
    EXPECT_LE(usage["completion_tokens"].get<int>(), 16);
    EXPECT_EQ(usage["total_tokens"], usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
    if (finish == "length") {
        EXPECT_EQ(usage["completion_tokens"], 16);
    }

    auto streamed = post(moed.socket(), "/v1/completions",
                         completion_body("int main(", 16, true, R"("stream_options":{"include_usage":true})"));
    ASSERT_EQ(streamed.status, 200u);
    EXPECT_EQ(streamed.content_type, "text/event-stream");
    auto s = read_stream(streamed.body);
    EXPECT_TRUE(s.framing_ok) << streamed.body;
    EXPECT_TRUE(s.done_last) << streamed.body;
    EXPECT_EQ(s.text, text) << "greedy: the stream carries the same text";
    EXPECT_EQ(s.finish_reason, finish);
    EXPECT_EQ(s.usage, usage);

    auto chat = post(moed.socket(), "/v1/chat/completions", chat_body("Write a shell loop.", 12, false));
    ASSERT_EQ(chat.status, 200u) << chat.body;
    auto c = chat.json();
    EXPECT_EQ(c["object"], "chat.completion");
    EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
    const std::string chat_text = c["choices"][0]["message"]["content"];
    auto chat_stream = post(moed.socket(), "/v1/chat/completions", chat_body("Write a shell loop.", 12, true));
    ASSERT_EQ(chat_stream.status, 200u);
    auto cs = read_stream(chat_stream.body);
    EXPECT_TRUE(cs.framing_ok && cs.done_last) << chat_stream.body;
    EXPECT_EQ(cs.text, chat_text);
    EXPECT_EQ(cs.finish_reason, c["choices"][0]["finish_reason"]);
    auto first = json::parse(parse_sse(chat_stream.body).data.front());
    EXPECT_EQ(first["object"], "chat.completion.chunk");

    auto models = get(moed.socket(), "/v1/models");
    ASSERT_EQ(models.status, 200u);
    EXPECT_EQ(models.json()["data"][0]["id"], "tinymoe");
    auto st = moed.status();
    EXPECT_EQ(st["model"]["id"], "tinymoe");
    EXPECT_EQ(st["model"]["architecture"], "qwen3moe");
    EXPECT_EQ(st["threads"], 2);
    EXPECT_GE(st["requests_total"].get<int>(), 4);
    EXPECT_FALSE(st.contains("tiers") && !st["tiers"].is_null()) << "all experts resident: no tier stats";
    auto metrics = get(moed.socket(), "/metrics");
    ASSERT_EQ(metrics.status, 200u);
    EXPECT_NE(metrics.body.find("moed_requests_total "), std::string::npos);
    EXPECT_NE(metrics.body.find("io_mode=\"resident\""), std::string::npos);
    EXPECT_NE(moed.log().find("\"POST /v1/completions\" 200"), std::string::npos) << "access log line";
    EXPECT_NE(moed.log().find(fmt::format("pid={} uid={}", ::getpid(), ::getuid())), std::string::npos)
        << "peer credentials in the access log";
}

TEST(MoedIntegration, TieredExpertsReportTierStats) {
    moed_process moed({"--tiers-host-budget", "50%", "--tiers-mlock", "off"});
    ASSERT_TRUE(moed.ready());
    auto r = post(moed.socket(), "/v1/completions", completion_body("def f(x):", 8, false));
    ASSERT_EQ(r.status, 200u) << r.body;
    auto st = moed.status();
    ASSERT_TRUE(st.contains("tiers") && st["tiers"].is_object()) << st.dump();
    EXPECT_GT(st["tiers"]["host"]["capacity_bytes"].get<std::uint64_t>(), 0u);
    EXPECT_GT(st["tiers"]["host"]["hits"].get<std::uint64_t>() + st["tiers"]["host"]["misses"].get<std::uint64_t>(), 0u);
    // One residency row per layer, one character per expert.
    const auto& rows = st["tiers"]["layer_residency"];
    ASSERT_EQ(rows.size(), st["model"]["n_layer"].get<std::size_t>()) << st["tiers"].dump();
    for (const auto& row : rows) EXPECT_EQ(row.get<std::string>().size(), st["model"]["n_expert"].get<std::size_t>());
    auto metrics = get(moed.socket(), "/metrics");
    EXPECT_NE(metrics.body.find("moed_tier_misses_total{tier=\"host\""), std::string::npos);
    EXPECT_NE(metrics.body.find("moed_tier_load_latency_seconds{"), std::string::npos);
    // The load-latency summary has _sum and _count over every load (misses read, so some did).
    const std::string host = "{tier=\"host\",io_mode=\"" + st["tiers"]["io_mode"].get<std::string>() + "\"}";
    EXPECT_GT(sample_value(metrics.body, "moed_tier_load_latency_seconds_count" + host), 0.0) << metrics.body;
    EXPECT_GT(sample_value(metrics.body, "moed_tier_load_latency_seconds_sum" + host), 0.0) << metrics.body;
    // Prefetch is on by default: the planner predicted, the tier prefetched, and the ring and
    // the prefetch figures are reported.
    const auto& pf = st["tiers"]["prefetch"];
    EXPECT_GT(pf["issued"].get<std::uint64_t>(), 0u) << pf.dump();
    EXPECT_GT(pf["routed"].get<std::uint64_t>(), 0u) << pf.dump();
    EXPECT_GT(pf["recall"].get<double>(), 0.0) << pf.dump();
    EXPECT_GT(pf["tokens"].get<std::uint64_t>(), 0u) << pf.dump();
    EXPECT_TRUE(st["tiers"]["ring"]["enabled"].get<bool>());
    EXPECT_GE(st["tiers"]["ring"]["sections"].size(), 2u);
    EXPECT_NE(metrics.body.find("moed_prefetch_hits_total "), std::string::npos);
    EXPECT_NE(metrics.body.find("moed_io_wait_seconds_total "), std::string::npos);
}

// Request times are histograms that count each request, and KV cache use is a gauge: before
// any request every histogram is empty; after three, each has counted three, its buckets
// are cumulative up to the +Inf bucket, and its sum is positive.
TEST(MoedIntegration, RequestHistogramsCountEachRequest) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    const char* histograms[] = {"moed_time_to_first_token_seconds", "moed_request_duration_seconds",
                                "moed_prompt_duration_seconds", "moed_generation_duration_seconds"};
    const auto before = get(moed.socket(), "/metrics");
    ASSERT_EQ(before.status, 200u);
    for (const char* h : histograms) {
        EXPECT_NE(before.body.find(std::string("# TYPE ") + h + " histogram\n"), std::string::npos) << h;
        EXPECT_EQ(sample_value(before.body, std::string(h) + "_count"), 0.0) << h;
        EXPECT_EQ(sample_value(before.body, std::string(h) + "_bucket{le=\"+Inf\"}"), 0.0) << h;
    }
    const double cells = sample_value(before.body, "moed_kv_cache_cells");
    EXPECT_GT(cells, 0.0) << before.body;

    constexpr int requests = 3;
    for (int i = 0; i < requests; ++i) {
        auto r = post(moed.socket(), "/v1/completions", completion_body("int main(", 4, i == 1));
        ASSERT_EQ(r.status, 200u) << r.body;
    }
    // Request times are counted before a response goes out; KV use is published at the end of
    // the engine's step, which may follow the last response by a moment: wait for it.
    auto after = get(moed.socket(), "/metrics");
    const auto deadline = std::chrono::steady_clock::now() + give_up_after;
    while (sample_value(after.body, "moed_kv_cache_cells_used") != 0.0 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(poll_interval);
        after = get(moed.socket(), "/metrics");
    }
    ASSERT_EQ(after.status, 200u);
    for (const char* h : histograms) {
        const std::string name(h);
        EXPECT_EQ(sample_value(after.body, name + "_count"), requests) << name << "\n" << after.body;
        EXPECT_GT(sample_value(after.body, name + "_sum"), 0.0) << name;
        const std::vector<double> buckets = bucket_counts(after.body, name);
        ASSERT_GE(buckets.size(), 2u) << name;
        EXPECT_EQ(buckets.back(), requests) << name << ": the +Inf bucket holds every request";
        for (std::size_t i = 1; i < buckets.size(); ++i) EXPECT_LE(buckets[i - 1], buckets[i]) << name;
    }
    // Nothing runs now: the cache is allocated and empty.
    EXPECT_EQ(sample_value(after.body, "moed_kv_cache_cells"), cells);
    EXPECT_EQ(sample_value(after.body, "moed_kv_cache_cells_used"), 0.0);
    EXPECT_GT(sample_value(after.body, "moed_kv_cache_bytes"), 0.0);
    EXPECT_EQ(sample_value(after.body, "moed_kv_cache_usage_ratio"), 0.0);
    // /v1/status carries the same histograms.
    const auto st = moed.status();
    EXPECT_EQ(st["timing"]["request_latency"]["count"], requests) << st["timing"].dump();
    EXPECT_EQ(st["timing"]["time_to_first_token"]["count"], requests);
    EXPECT_EQ(st["memory"]["kv_cache_cells"].get<double>(), cells);
}

TEST(MoedIntegration, TieredPrefetchStreamsMatchResidentRuns) {
    const std::vector<std::string> prompts{"int main(", "def parse(", "The river", "for f in *.txt; do"};
    std::vector<std::string> resident;
    {
        moed_process moed({});
        ASSERT_TRUE(moed.ready());
        for (const auto& p : prompts) {
            auto r = post(moed.socket(), "/v1/completions", completion_body(p, 24, false));
            ASSERT_EQ(r.status, 200u) << r.body;
            resident.push_back(r.json()["choices"][0]["text"]);
        }
    }
    // A quarter of the expert bytes, a lookahead of 3, and the streams decoding together.
    moed_process moed({"--tiers-host-budget", "25%", "--tiers-mlock", "off", "--tiers-lookahead", "3",
                       "--engine-max-sequences", "4"});
    ASSERT_TRUE(moed.ready());
    std::vector<stream_result> together(prompts.size());
    std::vector<std::thread> clients;
    for (std::size_t i = 0; i < prompts.size(); ++i)
        clients.emplace_back([&, i] {
            auto r = post(moed.socket(), "/v1/completions", completion_body(prompts[i], 24, true));
            together[i] = read_stream(r.body);
        });
    for (auto& t : clients) t.join();
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_TRUE(together[i].framing_ok && together[i].done_last) << i;
        EXPECT_EQ(together[i].text, resident[i]) << "prompt " << i << ": " << prompts[i];
    }
    EXPECT_TRUE(moed.wait_status([](const json& s) { return s["running_sequences"] == 0; }));
    const auto st = moed.status();
    EXPECT_GT(st["tiers"]["prefetch"]["issued"].get<std::uint64_t>(), 0u);
    EXPECT_EQ(st["tiers"]["host"]["read_errors"].get<std::uint64_t>(), 0u);
}

TEST(MoedIntegration, EightConcurrentStreamsMatchSoloRuns) {
    moed_process moed({"--engine-max-sequences", "8"});
    ASSERT_TRUE(moed.ready());
    const std::vector<std::string> prompts{"int main(", "def parse(", "The river", "for f in *.txt; do",
                                           "#include <", "import os\n", "Once upon a time", "[server]\nport ="};
    std::vector<std::string> solo;
    for (const auto& p : prompts) {
        auto r = post(moed.socket(), "/v1/completions", completion_body(p, 24, false));
        ASSERT_EQ(r.status, 200u) << r.body;
        solo.push_back(r.json()["choices"][0]["text"]);
    }
    std::vector<stream_result> together(prompts.size());
    std::vector<std::thread> clients;
    for (std::size_t i = 0; i < prompts.size(); ++i)
        clients.emplace_back([&, i] {
            auto r = post(moed.socket(), "/v1/completions", completion_body(prompts[i], 24, true));
            together[i] = read_stream(r.body);
        });
    for (auto& t : clients) t.join();
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_TRUE(together[i].framing_ok && together[i].done_last) << i;
        EXPECT_EQ(together[i].text, solo[i]) << "prompt " << i << ": " << prompts[i];
    }
    EXPECT_TRUE(moed.wait_status([](const json& s) { return s["running_sequences"] == 0; }));
}

TEST(MoedIntegration, BadRequestsGetStatusAndMessage) {
    moed_process moed({"--http-max-body-bytes", "8KiB"});
    ASSERT_TRUE(moed.ready());
    auto bad = post(moed.socket(), "/v1/completions", R"({"prompt": "x",)");
    EXPECT_EQ(bad.status, 400u);
    EXPECT_EQ(bad.error_type(), "invalid_request_error");
    EXPECT_EQ(bad.error_message().rfind("malformed JSON: [json.exception.parse_error.101] parse error at line 1", 0), 0u)
        << bad.body;
    expect_error(post(moed.socket(), "/v1/completions", R"({"prompt":"x","max_tokens":"5"})"), 400,
                 "invalid_request_error", "max_tokens: expected an integer, got string");
    expect_error(post(moed.socket(), "/v1/completions", R"({"prompt":"x","temperature":"0"})"), 400,
                 "invalid_request_error", "temperature: expected a number, got string");
    expect_error(post(moed.socket(), "/v1/completions", R"({"prompt":"x","stream":1})"), 400, "invalid_request_error",
                 "stream: expected a boolean, got integer");
    expect_error(post(moed.socket(), "/v1/chat/completions", R"({"messages":[{"role":"user","content":7}]})"), 400,
                 "invalid_request_error", "messages[0].content: expected a string or an array of text parts, got integer");
    expect_error(post(moed.socket(), "/v1/completions", R"({"model":"gpt-4o","prompt":"x"})"), 404, "not_found_error",
                 "model 'gpt-4o' is not served; available: tinymoe");
    expect_error(post(moed.socket(), "/v1/completions", completion_body(std::string(20000, 'a'), 4, false)), 413,
                 "request_too_large_error", "request body is larger than the 8192 bytes allowed (http.max_body_bytes)");
    expect_error(get(moed.socket(), "/v2/completions"), 404, "not_found_error", "no such endpoint: /v2/completions");
    expect_error(get(moed.socket(), "/v1/chat/completions"), 405, "method_not_allowed_error",
                 "/v1/chat/completions does not accept GET; use POST");
    expect_error(post(moed.socket(), "/v1/completions", R"({"prompt":"x","max_tokens":5000})"), 400,
                 "invalid_request_error", "max_tokens: 5000 is out of range [1, 4096]");
    // The daemon keeps serving after all of them.
    EXPECT_EQ(post(moed.socket(), "/v1/completions", completion_body("x", 2, false)).status, 200u);
    EXPECT_EQ(moed.status()["requests_total"], 1);
}

TEST(MoedIntegration, FullQueueIs429) {
    moed_process moed({"--engine-max-sequences", "1", "--engine-queue-length", "1"});
    ASSERT_TRUE(moed.ready());
    // Six long requests written back to back: one runs, one waits, the others find the
    // queue full (a request takes far longer than writing the six).
    constexpr int n = 6;
    std::vector<std::unique_ptr<http_connection>> conns;
    for (int i = 0; i < n; ++i) {
        conns.push_back(std::make_unique<http_connection>(moed.socket()));
        ASSERT_TRUE(conns.back()->connected());
    }
    const std::string body = completion_body("The", 200, false, R"("ignore_eos":true)");
    const std::string request = fmt::format(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.size(), body);
    for (auto& c : conns) ASSERT_TRUE(c->send_raw(request));
    int ok = 0;
    int full = 0;
    for (auto& c : conns) {
        auto r = c->read_reply();
        if (r.status == 200) {
            ++ok;
            EXPECT_EQ(r.json()["usage"]["completion_tokens"], 200);
        } else {
            ++full;
            expect_error(r, 429, "rate_limit_error", "the request queue is full (engine.queue_length is 1); retry later");
        }
    }
    // Whether the second request waits or is refused depends on whether the engine thread
    // admitted the first one before it came (the queue holds jobs not yet admitted).
    EXPECT_GE(full, 1);
    EXPECT_GE(ok, 1);
    EXPECT_EQ(ok + full, n);
}

TEST(MoedIntegration, ClientDisconnectMidStreamFreesTheSequence) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    {
        http_connection c(moed.socket());
        const std::string head = start_stream(c, completion_body("The", 220, true, R"("ignore_eos":true)"));
        ASSERT_NE(head.find("200 OK"), std::string::npos) << head;
        c.close();
    }
    EXPECT_TRUE(moed.wait_status([](const json& s) {
        return s["running_sequences"] == 0 && s["queue_waiting"] == 0 && s["requests"].empty();
    })) << moed.status().dump();
    auto st = moed.status();
    EXPECT_EQ(st["requests_cancelled"], 1);
    EXPECT_LT(st["generated_tokens_total"].get<int>(), 220) << "cancelled before its end";
    EXPECT_NE(moed.log().find("\"POST /v1/completions\" 499"), std::string::npos) << moed.log();
    // Still serving, and the freed sequence is reused.
    auto r = post(moed.socket(), "/v1/completions", completion_body("int x =", 4, false));
    EXPECT_EQ(r.status, 200u) << r.body;
}

TEST(MoedIntegration, SigtermDuringGenerationDrainsAndExitsZero) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    http_connection c(moed.socket());
    std::string got = start_stream(
        c, completion_body("The", 200, true, R"("ignore_eos":true,"stream_options":{"include_usage":true})"));
    ASSERT_NE(got.find("200 OK"), std::string::npos) << got;
    // The batch loop's drain waits for the sequences it has published as running; a job
    // admitted in the step still under way is not counted yet (the first token can reach
    // the client before that step publishes), so wait until status shows it (or shows it
    // already finished, on a machine fast enough to beat the poll).
    ASSERT_TRUE(moed.wait_status([](const json& st) {
        return st["running_sequences"] == 1 || st["generated_tokens_total"].get<int>() >= 200;
    }));
    moed.signal(SIGTERM);
    got += c.read_until("data: [DONE]\n\n");
    const auto body_start = got.find("data: ");
    // Strip the chunked framing: the events are what the chunks carry.
    std::string events;
    for (std::size_t pos = got.find("\r\n\r\n") + 4; pos < got.size();) {
        const std::size_t eol = got.find("\r\n", pos);
        if (eol == std::string::npos) break;
        const std::size_t len = std::stoul(got.substr(pos, eol - pos), nullptr, 16);
        if (len == 0) break;
        events += got.substr(eol + 2, len);
        pos = eol + 2 + len + 2;
    }
    ASSERT_NE(body_start, std::string::npos);
    auto s = read_stream(events);
    EXPECT_TRUE(s.framing_ok) << events;
    EXPECT_TRUE(s.done_last) << events;
    EXPECT_EQ(s.finish_reason, "length") << "the drain timeout (30 s) leaves time to finish";
    EXPECT_EQ(s.usage["completion_tokens"], 200);
    EXPECT_TRUE(c.closed_by_peer()) << "the connection closes after the last answer";
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
    EXPECT_FALSE(std::filesystem::exists(moed.socket())) << "the socket file is removed";
    EXPECT_NE(moed.log().find("draining"), std::string::npos);
}

TEST(MoedIntegration, SigtermWithShortDrainCancelsCleanly) {
    moed_process moed({"--daemon-drain-timeout-s", "0.001"});
    ASSERT_TRUE(moed.ready());
    http_connection streaming(moed.socket());
    ASSERT_NE(start_stream(streaming, completion_body("The", 220, true, R"("ignore_eos":true)")).find("200 OK"),
              std::string::npos);
    moed.signal(SIGTERM);
    const std::string rest = streaming.read_until("data: [DONE]\n\n");
    EXPECT_NE(rest.find("data: [DONE]"), std::string::npos) << rest;
    const bool cancelled = rest.find("\"finish_reason\":\"cancelled\"") != std::string::npos;
    const bool finished = rest.find("\"finish_reason\":\"length\"") != std::string::npos;
    EXPECT_TRUE(cancelled || finished) << rest;
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

TEST(MoedIntegration, StaleSocketIsReplacedLiveOneRefused) {
    const std::string path = (temp_dir() / "shared.sock").string();
    {
        // A socket file whose owner died: bound, never unlinked.
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
        ::close(fd);
    }
    ASSERT_TRUE(std::filesystem::exists(path));
    auto first = moed_process::raw({"--model-path", bundled_model(), "--socket-path", path, "--engine-threads", "1"});
    const auto deadline = std::chrono::steady_clock::now() + give_up_after;
    while (get(path, "/healthz").status != 200 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(poll_interval);
    ASSERT_EQ(get(path, "/healthz").status, 200u) << first.log();
    EXPECT_NE(first.log().find("replacing stale socket " + path), std::string::npos) << first.log();

    auto second = moed_process::raw({"--model-path", bundled_model(), "--socket-path", path});
    EXPECT_EQ(second.wait_exit(), 1);
    EXPECT_NE(second.log().find("another moed is listening on " + path), std::string::npos) << second.log();
    EXPECT_EQ(get(path, "/healthz").status, 200u) << "the first daemon still serves";
    first.signal(SIGTERM);
    EXPECT_EQ(first.wait_exit(), 0);
}

// systemd's side of Type=notify and socket activation, played by the test: the listening
// socket is passed as fd 3 (LISTEN_FDS/LISTEN_PID, set by a shell that then execs moed so
// the pid matches), and NOTIFY_SOCKET is a datagram socket the test reads. Expected:
// STATUS=loading..., READY=1 with a STATUS line, WATCHDOG=1 pings (WATCHDOG_USEC set),
// STOPPING=1 on SIGTERM; the passed socket serves and its file is left in place.
TEST(MoedIntegration, SystemdNotifyWatchdogAndSocketActivation) {
    const std::string listen_path = (temp_dir() / "activated.sock").string();
    const std::string notify_path = (temp_dir() / "notify.sock").string();
    auto bind_unix = [](int type, const std::string& path) {
        const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
        EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
        return fd;
    };
    const int listen_fd = bind_unix(SOCK_STREAM, listen_path);
    ASSERT_EQ(::listen(listen_fd, 16), 0);
    const int notify_fd = bind_unix(SOCK_DGRAM, notify_path);
    timeval tv{1, 0};
    ::setsockopt(notify_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    const std::string log_path = (temp_dir() / "activated.log").string();
    const std::string script = "LISTEN_PID=$$ LISTEN_FDS=1 WATCHDOG_PID=$$ WATCHDOG_USEC=100000 NOTIFY_SOCKET=" +
                               notify_path + " exec " + moed_binary() + " --model-path " + bundled_model() +
                               " --socket-path " + (temp_dir() / "unused.sock").string() + " --engine-threads 1";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, listen_fd, 3);  // dup2 clears close-on-exec
    const char* argv[] = {"/bin/sh", "-c", script.c_str(), nullptr};
    pid_t pid = -1;
    ASSERT_EQ(::posix_spawn(&pid, "/bin/sh", &actions, nullptr, const_cast<char**>(argv), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    ::close(listen_fd);

    // Collects notify messages until `want` has come (or nothing comes for a long while).
    std::string messages;
    auto wait_for = [&](const std::string& want) {
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (messages.find(want) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
            char buf[4096];
            const ssize_t n = ::recv(notify_fd, buf, sizeof(buf), 0);
            if (n > 0) messages.append(buf, static_cast<std::size_t>(n)).append("\n");
        }
        return messages.find(want) != std::string::npos;
    };
    EXPECT_TRUE(wait_for("READY=1")) << messages << read_file(log_path);
    EXPECT_NE(messages.find("STATUS=loading model " + bundled_model()), std::string::npos) << messages;
    EXPECT_NE(messages.find("STATUS=ready: 8 sequences, model tinymoe"), std::string::npos) << messages;
    EXPECT_LT(messages.find("STATUS=loading"), messages.find("READY=1"));
    // Load progress, each message extending the start-up timeout, all before READY=1.
    EXPECT_LT(messages.find("STATUS=loading 0%\nEXTEND_TIMEOUT_USEC=60000000"), messages.find("READY=1")) << messages;
    EXPECT_LT(messages.find("STATUS=loading 100%\nEXTEND_TIMEOUT_USEC=60000000"), messages.find("READY=1"))
        << messages;
    EXPECT_TRUE(wait_for("WATCHDOG=1")) << messages;

    auto r = post(listen_path, "/v1/completions", completion_body("int main(", 4, false));
    EXPECT_EQ(r.status, 200u) << r.body << read_file(log_path);
    EXPECT_NE(read_file(log_path).find("systemd socket (fd 3)"), std::string::npos) << read_file(log_path);
    EXPECT_FALSE(std::filesystem::exists(temp_dir() / "unused.sock")) << "socket.path is not bound when activated";

    ::kill(pid, SIGTERM);
    EXPECT_TRUE(wait_for("STOPPING=1")) << messages;
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(log_path);
    EXPECT_TRUE(std::filesystem::exists(listen_path)) << "systemd's socket file is not moed's to remove";
    ::close(notify_fd);
}

TEST(MoedIntegration, CurlWorksOverTheUnixSocket) {
    if (::access("/usr/bin/curl", X_OK) != 0) GTEST_SKIP() << "curl is not installed (/usr/bin/curl)";
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    auto run = [](const std::string& cmd) {
        std::string out;
        FILE* p = ::popen(cmd.c_str(), "r");
        if (!p) return out;
        char buf[4096];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
        ::pclose(p);
        return out;
    };
    const std::string base = "/usr/bin/curl -sS --max-time 120 --unix-socket " + moed.socket() + " ";
    const json r = json::parse(run(base + "http://localhost/v1/completions -H 'Content-Type: application/json' -d '" +
                                   completion_body("int main(", 8, false) + "'"),
                               nullptr, false);
    ASSERT_TRUE(r.is_object());
    EXPECT_EQ(r["object"], "text_completion");
    const std::string streamed =
        run(base + "-N http://localhost/v1/chat/completions -d '" + chat_body("hello", 6, true) + "'");
    auto s = read_stream(streamed);
    EXPECT_TRUE(s.framing_ok && s.done_last) << streamed;
    EXPECT_EQ(run(base + "-o /dev/null -w '%{http_code}' http://localhost/v1/nope"), "404");
    // Over 1 MiB curl asks "Expect: 100-continue" first; the daemon refuses at the header.
    const auto big = temp_dir() / "big.json";
    std::ofstream(big) << completion_body(std::string(2u << 20, 'a'), 4, false);
    const json too_big = json::parse(run(base + "http://localhost/v1/completions -d @" + big.string()), nullptr, false);
    ASSERT_TRUE(too_big.is_object());
    EXPECT_EQ(too_big["error"]["message"], "request body is larger than the 1048576 bytes allowed (http.max_body_bytes)");
    EXPECT_NE(run(base + "http://localhost/metrics").find("# TYPE moed_requests_total counter"), std::string::npos);
}

TEST(MoedIntegration, BadConfigExitsTwoNamingTheKey) {
    const auto cfg = temp_dir() / "bad.toml";
    std::ofstream(cfg) << "[engine]\nthreads = \"many\"\n";
    auto bad_type = moed_process::raw({"--config", cfg.string()});
    EXPECT_EQ(bad_type.wait_exit(), 2);
    EXPECT_EQ(bad_type.log(), "moed: " + cfg.string() + ":2:1: key 'engine.threads': expected an integer, got a string\n");

    const auto cfg2 = temp_dir() / "unknown.toml";
    std::ofstream(cfg2) << "[socket]\npath = \"/tmp/x.sock\"\nmod = \"0600\"\n";
    auto unknown = moed_process::raw({"--config", cfg2.string()});
    EXPECT_EQ(unknown.wait_exit(), 2);
    EXPECT_EQ(unknown.log(), "moed: " + cfg2.string() + ":3:1: unknown key 'socket.mod'\n");

    auto flag = moed_process::raw({"--engine-max-sequences", "0"});
    EXPECT_EQ(flag.wait_exit(), 2);
    EXPECT_EQ(flag.log(), "moed: --engine-max-sequences: 0 is out of range [1, 1024]\n");

    auto size = moed_process::raw({"--tiers-host-budget", "lots"});
    EXPECT_EQ(size.wait_exit(), 2);
    EXPECT_NE(size.log().find("--tiers-host-budget:"), std::string::npos) << size.log();

    auto model = moed_process::raw({"--model-path", "/nonexistent.gguf"});
    EXPECT_EQ(model.wait_exit(), 2);
    EXPECT_EQ(model.log(), "moed: model.path: '/nonexistent.gguf' is not a readable file\n");
}

}  // namespace
}  // namespace moed::test
