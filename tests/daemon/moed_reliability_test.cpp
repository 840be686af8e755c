// What a user's file operations and signals do to a running moed (the real binary on a copy
// of the bundled model):
//  - without a host budget, truncating or rewriting the model file changes nothing (the
//    weights served are moed's own copy; the file used to stay mapped and a cut page killed
//    the process with SIGBUS);
//  - with a host budget, a cut file fails the requests that need a read from it with a clear
//    error, /healthz and /v1/status say the model is broken, and once the file holds the same
//    model again moed serves it on its own; identical bytes copied over the file recover the
//    same way;
//  - SIGHUP reloads the configuration (applied keys, keys waiting for a restart, a broken
//    file keeps the running configuration), SIGUSR1 logs a status line, other signals whose
//    default would kill are ignored, and a stream running meanwhile ends with [DONE].
// Waits poll the daemon with a generous safety limit; nothing asserts on wall time.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "tests/daemon/moed_process.h"

namespace moed::test {
namespace {

namespace fs = std::filesystem;

std::string copy_of_model(const std::string& name) {
    const fs::path dst = temp_dir() / name;
    fs::copy_file(bundled_model(), dst, fs::copy_options::overwrite_existing);
    return dst.string();
}

std::vector<char> bytes_of(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

// Writes `bytes` over the file in place, as cp does (same inode, new mtime).
void write_in_place(const std::string& path, const std::vector<char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good());
}

template <typename Pred>
bool eventually(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + give_up_after;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(poll_interval);
    }
    return pred();
}

bool alive(pid_t pid) { return ::kill(pid, 0) == 0; }

const std::vector<std::string> prompts = {"int main(", "The capital of France is", "def fibonacci(n):",
                                          "SELECT name FROM", "Once upon a time", "#include <stdio.h>"};

std::vector<std::string> completions(const moed_process& moed, std::vector<unsigned>* statuses = nullptr,
                                     std::vector<std::string>* errors = nullptr) {
    std::vector<std::string> texts;
    for (const auto& p : prompts) {
        auto r = post(moed.socket(), "/v1/completions", completion_body(p, 12, false));
        if (statuses) statuses->push_back(r.status);
        if (r.status == 200) {
            texts.push_back(r.json()["choices"][0]["text"]);
        } else {
            texts.emplace_back();
            if (errors) errors->push_back(r.error_message());
        }
    }
    return texts;
}

// The completions of a daemon whose model file is intact: every one must succeed.
std::vector<std::string> healthy_completions(const moed_process& moed) {
    std::vector<unsigned> statuses;
    auto texts = completions(moed, &statuses);
    for (unsigned status : statuses) EXPECT_EQ(status, 200u);
    return texts;
}

TEST(MoedReliability, ResidentModelKeepsServingWhenTheFileIsCutOrRewritten) {
    const std::string model = copy_of_model("resident-cut.gguf");
    moed_process moed({"--model-id", "tinymoe", "--model-path", model});
    ASSERT_TRUE(moed.ready());
    const auto before = healthy_completions(moed);
    if (HasFailure()) return;

    fs::resize_file(model, fs::file_size(model) / 2);
    EXPECT_EQ(completions(moed), before);
    fs::resize_file(model, 4096);
    EXPECT_EQ(completions(moed), before);
    write_in_place(model, std::vector<char>(8192, 'x'));
    EXPECT_EQ(completions(moed), before);
    EXPECT_TRUE(alive(moed.pid()));
    EXPECT_EQ(get(moed.socket(), "/healthz").status, 200u);
    moed.signal(SIGTERM);
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

TEST(MoedReliability, TieredModelCutFailsClearlyThenRecoversWhenRestored) {
    const std::string model = copy_of_model("tiered-cut.gguf");
    const std::vector<char> original = bytes_of(model);
    moed_process moed({"--model-id", "tinymoe", "--model-path", model, "--tiers-host-budget", "25%"});
    ASSERT_TRUE(moed.ready());
    const auto before = healthy_completions(moed);
    if (HasFailure()) return;

    fs::resize_file(model, 4096);
    // The checker finds the change without any request; health and status say so.
    ASSERT_TRUE(eventually([&] { return get(moed.socket(), "/healthz").status == 503; })) << moed.log();
    auto health = get(moed.socket(), "/healthz").json();
    EXPECT_EQ(health["status"], "broken");
    EXPECT_NE(health["error"].get<std::string>().find(model), std::string::npos) << health.dump();
    auto st = moed.status();
    EXPECT_EQ(st["model"]["state"], "broken");
    EXPECT_NE(st["model"]["error"].get<std::string>().find("changed since it was opened"), std::string::npos)
        << st["model"].dump();

    // Requests that need an expert not in memory fail with the reason; none is lost silently
    // and the daemon keeps serving.
    std::vector<unsigned> statuses;
    std::vector<std::string> errors;
    completions(moed, &statuses, &errors);
    ASSERT_FALSE(errors.empty()) << "a 25% budget holds every expert these prompts need?";
    for (const auto& e : errors) {
        EXPECT_NE(e.find(model), std::string::npos) << e;
        EXPECT_NE(e.find("not in host memory"), std::string::npos) << e;
    }
    for (unsigned s : statuses) EXPECT_TRUE(s == 200 || s >= 500) << s;
    EXPECT_TRUE(alive(moed.pid()));

    write_in_place(model, original);
    ASSERT_TRUE(eventually([&] { return get(moed.socket(), "/healthz").status == 200; })) << moed.log();
    EXPECT_EQ(moed.status()["model"]["state"], "ok");
    EXPECT_EQ(completions(moed), before);
    EXPECT_NE(moed.log().find("holds the model opened again"), std::string::npos) << moed.log();
    moed.signal(SIGTERM);
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

TEST(MoedReliability, IdenticalBytesCopiedOverTheFileRecoverOnTheirOwn) {
    const std::string model = copy_of_model("tiered-same.gguf");
    const std::vector<char> original = bytes_of(model);
    moed_process moed({"--model-id", "tinymoe", "--model-path", model, "--tiers-host-budget", "25%"});
    ASSERT_TRUE(moed.ready());
    const auto before = healthy_completions(moed);
    if (HasFailure()) return;

    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a new mtime
    write_in_place(model, original);
    ASSERT_TRUE(eventually([&] { return moed.log().find("holds the model opened again") != std::string::npos; }))
        << moed.log();
    EXPECT_EQ(get(moed.socket(), "/healthz").status, 200u);
    EXPECT_EQ(completions(moed), before);
}

std::string write_config(const std::string& name, const std::string& text) {
    const fs::path p = temp_dir() / name;
    std::ofstream(p) << text;
    return p.string();
}

TEST(MoedReliability, SighupReloadsUsr1LogsOtherSignalsAreIgnored) {
    const std::string config = write_config("reload.toml", "[http]\nmax_body_bytes = \"1MiB\"\n");
    moed_process moed({"--config", config});
    ASSERT_TRUE(moed.ready());
    const std::string body = completion_body("int main(", 24, true);

    // A stream running while the signals arrive ends normally.
    http_connection c(moed.socket());
    start_stream(c, body);

    write_config("reload.toml", "[http]\nmax_body_bytes = 40\n[engine]\nmax_sequences = 3\n");
    moed.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return moed.log().find("configuration reloaded") != std::string::npos; }))
        << moed.log();
    const std::string log = moed.log();
    EXPECT_NE(log.find("applied http.max_body_bytes"), std::string::npos) << log;
    EXPECT_NE(log.find("applied only at the next start: engine.max_sequences"), std::string::npos) << log;
    auto too_big = post(moed.socket(), "/v1/completions", completion_body("int main(", 4, false));
    EXPECT_EQ(too_big.status, 413u) << too_big.body;
    EXPECT_EQ(moed.status()["max_sequences"], 8) << "engine.max_sequences waits for a restart";

    for (int signo : {SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXFSZ, SIGRTMIN + 1}) moed.signal(signo);
    moed.signal(SIGUSR1);
    ASSERT_TRUE(eventually([&] { return moed.log().find("status: model tinymoe ok") != std::string::npos; }))
        << moed.log();

    write_config("reload.toml", "[http]\nmax_body_bytes = \"lots\"\n");
    moed.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return moed.log().find("configuration not reloaded") != std::string::npos; }))
        << moed.log();
    EXPECT_NE(moed.log().find("http.max_body_bytes"), std::string::npos);
    EXPECT_EQ(post(moed.socket(), "/v1/completions", completion_body("int main(", 4, false)).status, 413u)
        << "the running configuration stays";

    const std::string rest = c.read_until("data: [DONE]");
    EXPECT_NE(rest.find("data: [DONE]"), std::string::npos) << rest;
    EXPECT_TRUE(alive(moed.pid()));
    EXPECT_NE(moed.log().find("User defined signal 2 (signal 12) ignored"), std::string::npos) << moed.log();
    moed.signal(SIGTERM);
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

}  // namespace
}  // namespace moed::test
