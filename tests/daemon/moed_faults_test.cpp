// moed serving under a faulty disk: the real binary at a 25% host budget with prefetch on,
// its expert reads going through the fault-injecting reader (tiers.inject_faults: bursts of
// EIO longer than the retries, short reads, latency spikes, the file's identity flipping as
// if it were replaced), and 16 concurrent clients, streaming and not. Checked: every request
// either completes with exactly the tokens of a fault-free run, or fails with a clear error
// that names the model file and the failed read (a stream that fails after its first chunks
// carried a prefix of the fault-free text); faults really happened (read errors counted);
// the daemon keeps serving and exits 0 on SIGTERM, which under ASan also means no leak.
#include <signal.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/daemon/moed_process.h"

namespace moed::test {
namespace {

constexpr int n_clients = 16;
constexpr int requests_per_client = 3;
constexpr int max_tokens = 16;

std::string prompt_of(int client, int k) {
    static const std::vector<std::string> starts = {"int main(", "The capital of France is", "def fibonacci(n):",
                                                    "SELECT name FROM", "Once upon a time", "#include <stdio.h>",
                                                    "for (int i = 0;", "The quick brown fox"};
    return starts[static_cast<std::size_t>(client + k) % starts.size()] + " " + std::to_string(client * 7 + k);
}

struct outcome {
    bool ok = false;
    std::string text;   // the whole text (ok) or what arrived before the failure
    std::string error;  // why it failed
};

outcome run_request(const std::string& socket, const std::string& prompt, bool stream) {
    outcome o;
    auto r = post(socket, "/v1/completions", completion_body(prompt, max_tokens, stream));
    if (r.status != 200) {
        o.error = r.error_message().empty() ? fmt::format("status {}: {}{}", r.status, r.body, r.error)
                                            : r.error_message();
        return o;
    }
    if (!stream) {
        o.ok = true;
        o.text = r.json()["choices"][0]["text"];
        return o;
    }
    const stream_result s = read_stream(r.body);
    o.text = s.text;
    if (!s.error.empty()) {
        o.error = s.error;
    } else if (!s.framing_ok || !s.done_last) {
        o.error = "stream ended without [DONE]: " + r.body;
    } else {
        o.ok = true;
    }
    return o;
}

TEST(MoedFaults, SixteenClientsUnderInjectedFaultsFailOnlyWhatTheFaultsHit) {
    std::vector<std::vector<std::string>> reference(n_clients, std::vector<std::string>(requests_per_client));
    {
        moed_process clean({"--tiers-host-budget", "25%", "--tiers-prefetch", "true"});
        ASSERT_TRUE(clean.ready());
        for (int c = 0; c < n_clients; ++c) {
            for (int k = 0; k < requests_per_client; ++k) {
                const outcome o = run_request(clean.socket(), prompt_of(c, k), false);
                ASSERT_TRUE(o.ok) << o.error;
                reference[c][k] = o.text;
            }
        }
    }

    moed_process moed({"--tiers-host-budget", "25%", "--tiers-prefetch", "true", "--tiers-inject-faults",
                       "eio_every=5000,eio_burst=30,short=0.7,spike_every=101,spike_us=5000,replace_every=60000"});
    ASSERT_TRUE(moed.ready());
    std::mutex mu;
    std::vector<std::string> problems;
    std::atomic<int> ok{0}, failed{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < n_clients; ++c) {
        clients.emplace_back([&, c] {
            for (int k = 0; k < requests_per_client; ++k) {
                const bool stream = (c + k) % 2 == 0;
                const outcome o = run_request(moed.socket(), prompt_of(c, k), stream);
                const std::string& want = reference[c][k];
                std::lock_guard lock(mu);
                if (o.ok) {
                    ++ok;
                    if (o.text != want) {
                        problems.push_back(fmt::format("client {} request {}: '{}' instead of '{}'", c, k, o.text, want));
                    }
                    continue;
                }
                ++failed;
                // A clear error: the file and what went wrong with it.
                const bool names_file = o.error.find(".gguf") != std::string::npos;
                const bool says_why = o.error.find("reading expert") != std::string::npos ||
                                      o.error.find("changed since it was opened") != std::string::npos;
                if (!names_file || !says_why) {
                    problems.push_back(fmt::format("client {} request {}: unclear error: {}", c, k, o.error));
                }
                if (want.compare(0, o.text.size(), o.text) != 0) {
                    problems.push_back(fmt::format("client {} request {}: partial text '{}' is not a prefix of '{}'", c,
                                                   k, o.text, want));
                }
            }
        });
    }
    for (auto& t : clients) t.join();
    for (const auto& p : problems) ADD_FAILURE() << p;
    EXPECT_EQ(ok + failed, n_clients * requests_per_client);
    EXPECT_GT(ok.load(), 0) << "no request got through the faults";
    const json st = moed.status();
    ASSERT_TRUE(st["tiers"].is_object()) << st.dump();
    EXPECT_GT(st["tiers"]["host"]["read_errors"].get<std::uint64_t>(), 0u) << "the faults never fired";
    std::printf("under faults: %d requests completed exactly, %d failed cleanly, %llu read errors\n", ok.load(),
                failed.load(), static_cast<unsigned long long>(st["tiers"]["host"]["read_errors"].get<std::uint64_t>()));

    // Still serving once the storm passes the requests: a request after them works or fails
    // cleanly, and the daemon stops cleanly.
    const outcome after = run_request(moed.socket(), prompt_of(0, 0), false);
    if (after.ok) {
        EXPECT_EQ(after.text, reference[0][0]);
    }
    moed.signal(SIGTERM);
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

}  // namespace
}  // namespace moed::test
