// bench/serve: N concurrent streaming clients against an OpenAI-compatible server (moed on
// its Unix socket, or any server on TCP such as llama.cpp's llama-server), each sending
// streaming /v1/completions requests back to back for a fixed number of rounds. Prints one
// JSON object per N: total generated tokens/s over the whole run, time to first token and
// per-token latency (gap between streamed chunks) p50/p99.
//
//   bench-serve (--socket PATH | --tcp HOST:PORT) [--clients 1,4,16] [--max-tokens 64]
//               [--rounds 2] [--model ID] [--prompt-file FILE]
// One streamed chunk is counted as one token (both moed and llama-server send one chunk per
// token); prompts differ per client so no server-side cache can share work between them.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>  // Boost 1.74's asio/awaitable.hpp uses std::exchange without including it
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "tools/cli_util.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using clock_type = std::chrono::steady_clock;

namespace {

struct target {
    std::string socket_path;
    std::string host;
    std::string port;
};

struct request_figures {
    double ttft_ms = 0.0;
    std::vector<double> gaps_ms;
    std::int64_t tokens = 0;
    bool ok = false;
    std::string error;
};

// One streaming request on a fresh connection; reads the SSE body as it arrives.
template <typename Stream>
request_figures stream_request(Stream& stream, const std::string& host_header, const std::string& body) {
    request_figures f;
    http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
    req.set(http::field::host, host_header);
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    const auto start = clock_type::now();
    http::write(stream, req);

    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    // Boost 1.74 treats an unset limit (boost::none) as zero for some bodies: give a huge one.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    http::read_header(stream, buffer, parser);
    if (parser.get().result() != http::status::ok) {
        f.error = "HTTP " + std::to_string(parser.get().result_int());
        return f;
    }
    std::string pending;
    char chunk[4096];
    auto last = start;
    bool done = false;
    while (!parser.is_done() && !done) {
        parser.get().body().data = chunk;
        parser.get().body().size = sizeof(chunk);
        beast::error_code ec;
        http::read_some(stream, buffer, parser, ec);
        if (ec == http::error::need_buffer) ec = {};
        if (ec) {
            f.error = ec.message();
            return f;
        }
        pending.append(chunk, sizeof(chunk) - parser.get().body().size);
        std::size_t pos;
        while ((pos = pending.find("\n\n")) != std::string::npos) {
            const std::string event = pending.substr(0, pos);
            pending.erase(0, pos + 2);
            if (event.rfind("data: ", 0) != 0) continue;
            const std::string data = event.substr(6);
            if (data == "[DONE]") {
                done = true;
                break;
            }
            const auto j = nlohmann::json::parse(data, nullptr, false);
            if (j.is_discarded() || !j.contains("choices") || j["choices"].empty()) continue;
            const auto& c = j["choices"][0];
            const bool has_text = c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty();
            if (!has_text) continue;
            const auto now = clock_type::now();
            if (f.tokens == 0) f.ttft_ms = std::chrono::duration<double, std::milli>(now - start).count();
            else f.gaps_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
            last = now;
            ++f.tokens;
        }
    }
    f.ok = true;
    return f;
}

request_figures run_one(const target& t, const std::string& body) {
    try {
        asio::io_context io;
        if (!t.socket_path.empty()) {
            asio::local::stream_protocol::socket s(io);
            s.connect(asio::local::stream_protocol::endpoint(t.socket_path));
            return stream_request(s, "localhost", body);
        }
        asio::ip::tcp::resolver resolver(io);
        asio::ip::tcp::socket s(io);
        asio::connect(s, resolver.resolve(t.host, t.port));
        return stream_request(s, t.host, body);
    } catch (const std::exception& e) {
        request_figures f;
        f.error = e.what();
        return f;
    }
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

std::vector<std::string> default_prompts() {
    return {"int main(int argc, char **argv) {", "def parse_args(argv):", "The river ran through the old town",
            "#!/bin/sh\nset -e\n", "static void free_buffer(struct buffer *b)", "class Config(object):",
            "In the morning the market was", "for f in *.txt; do", "    if (ret < 0)", "import os\nimport sys\n",
            "She opened the letter and", "export PATH=", "struct list_head {", "    return self.value",
            "It was the first time that", "case \"$1\" in"};
}

}  // namespace

int main(int argc, char** argv) {
    target t;
    std::vector<int> clients{1, 4, 16};
    int max_tokens = 64;
    int rounds = 2;
    std::string model;  // empty: the request names no model (the server's own)
    std::vector<std::string> prompts = default_prompts();
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) moed::tools::fail("bench-serve", "missing value after " + a);
            return argv[++i];
        };
        if (a == "--socket") t.socket_path = next();
        else if (a == "--tcp") {
            const std::string hp = next();
            const auto colon = hp.rfind(':');
            if (colon == std::string::npos) moed::tools::fail("bench-serve", "--tcp wants HOST:PORT");
            t.host = hp.substr(0, colon);
            t.port = hp.substr(colon + 1);
        } else if (a == "--clients") {
            clients.clear();
            std::stringstream ss(next());
            std::string item;
            while (std::getline(ss, item, ',')) {
                clients.push_back(moed::tools::parse_number<int>("bench-serve", "--clients", item.c_str(),
                                                                 moed::tools::sign::positive));
            }
        } else if (a == "--max-tokens") max_tokens = moed::tools::parse_number<int>("bench-serve", a, next(), moed::tools::sign::positive);
        else if (a == "--rounds") rounds = moed::tools::parse_number<int>("bench-serve", a, next(), moed::tools::sign::positive);
        else if (a == "--model") model = next();
        else if (a == "--prompt-file") {
            std::ifstream in(next());
            prompts.clear();
            for (std::string line; std::getline(in, line);) {
                if (!line.empty()) prompts.push_back(line);
            }
            if (prompts.empty()) moed::tools::fail("bench-serve", "--prompt-file has no prompts");
        } else {
            moed::tools::fail("bench-serve", "unknown argument '" + a + "'");
        }
    }
    if (t.socket_path.empty() == t.host.empty()) moed::tools::fail("bench-serve", "give exactly one of --socket PATH or --tcp HOST:PORT");

    nlohmann::json results = nlohmann::json::array();
    for (int n : clients) {
        std::mutex mu;
        std::vector<request_figures> all;
        const auto start = clock_type::now();
        std::vector<std::thread> threads;
        for (int c = 0; c < n; ++c) {
            threads.emplace_back([&, c] {
                for (int r = 0; r < rounds; ++r) {
                    nlohmann::json body{{"prompt", prompts[static_cast<std::size_t>(c + r) % prompts.size()]},
                                              {"max_tokens", max_tokens},
                                              {"temperature", 0.0},
                                              {"stream", true},
                                              {"ignore_eos", true}};
                    if (!model.empty()) body["model"] = model;
                    auto f = run_one(t, body.dump());
                    std::lock_guard lock(mu);
                    all.push_back(std::move(f));
                }
            });
        }
        for (auto& th : threads) th.join();
        const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
        std::int64_t tokens = 0;
        int failed = 0;
        std::vector<double> ttft, gaps;
        std::string first_error;
        for (const auto& f : all) {
            if (!f.ok) {
                ++failed;
                if (first_error.empty()) first_error = f.error;
                continue;
            }
            tokens += f.tokens;
            ttft.push_back(f.ttft_ms);
            gaps.insert(gaps.end(), f.gaps_ms.begin(), f.gaps_ms.end());
        }
        nlohmann::json row{{"clients", n},
                           {"requests", all.size()},
                           {"failed", failed},
                           {"tokens", tokens},
                           {"seconds", seconds},
                           {"total_tokens_per_s", static_cast<double>(tokens) / seconds},
                           {"ttft_ms_p50", percentile(ttft, 0.5)},
                           {"ttft_ms_p99", percentile(ttft, 0.99)},
                           {"token_latency_ms_p50", percentile(gaps, 0.5)},
                           {"token_latency_ms_p99", percentile(gaps, 0.99)}};
        if (!first_error.empty()) row["first_error"] = first_error;
        results.push_back(row);
    }
    std::cout << nlohmann::json{{"bench", "serve"}, {"target", t.socket_path.empty() ? t.host + ":" + t.port : t.socket_path},
                                {"max_tokens", max_tokens}, {"rounds", rounds}, {"results", results}}.dump()
              << "\n";
    return 0;
}
