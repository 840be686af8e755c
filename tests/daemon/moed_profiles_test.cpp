// Task profiles through the real `moed` binary on the bundled tinymoe model, with a
// temporary state directory. Checked, with status and message of every error:
// - before any profile exists: an empty list, prune asked for is refused (400);
// - POST /v1/profiles creates profiles from example prompts (201, summary with prompts,
//   tokens, model identity), writes <state_dir>/profiles/NAME.profile, and they are listed
//   and shown with each layer's top experts by decreasing score;
// - bad names, missing or empty prompts, unknown fields (400), an existing name (409,
//   unless "replace": true), unknown profiles (404), wrong methods (405 with Allow);
// - a completion naming a profile reports it ("request") in its "moed" object; an unknown
//   one is 400 naming it; a prompt like a profile's is matched to it ("matched"); a stream
//   carries the "moed" object on its first chunk only;
// - pruning to every expert generates exactly the unpruned text and says so; pruning to 5
//   is reported; a K out of range is 400;
// - DELETE removes the profile and its file; profiles survive a restart, and a corrupt file
//   or another model's profile in the directory is listed as a problem while the daemon
//   serves the good ones;
// - a store holding max_profiles profiles answers a new name with 507 naming the limit (a
//   replacement still works, a deletion makes room), and after a restart every profile it
//   accepted loads; a FIFO named *.profile does not block start-up and a leftover temporary
//   file of an interrupted write is removed with a log line.
#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "scheduler/profile.h"
#include "scheduler/profile_store.h"
#include "tests/daemon/http_test_client.h"
#include "tests/support/spawn_daemon.h"
#include "tests/support/test_paths.h"

extern char** environ;

namespace moed::test {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr auto give_up_after = std::chrono::seconds(120);

// One moed child on a temporary socket with its own state directory.
class moed_child {
public:
    explicit moed_child(const fs::path& state_dir) {
        static int counter = 0;
        const int n = ++counter;
        socket_ = (temp_dir() / fmt::format("prof{}.sock", n)).string();
        log_ = temp_dir() / fmt::format("prof{}.log", n);
        const std::vector<std::string> argv{std::string(MOED_BINARY_DIR) + "/daemon/moed",
                                            "--model-path", models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf",
                                            "--socket-path", socket_, "--engine-threads", "2",
                                            "--daemon-state-dir", state_dir.string()};
        (void)moed::test::spawn_daemon(argv, log_, pid_);  // pid stays -1 on failure; the wait below reports it
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (pid_ > 0 && std::chrono::steady_clock::now() < deadline) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                break;
            }
            if (fs::exists(socket_) && get(socket_, "/healthz").status == 200) {
                ready_ = true;
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        if (!ready_) ADD_FAILURE() << "moed did not start; log:\n" << log();
    }
    ~moed_child() {
        if (pid_ > 0) {
            ::kill(pid_, SIGTERM);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
    }
    bool ready() const { return ready_; }
    const std::string& socket() const { return socket_; }
    std::string log() const {
        std::ifstream in(log_);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }
    http_reply request(http::verb verb, const std::string& target, const std::string& body = "") {
        http_connection c(socket_);
        http_reply r = c.request(verb, target, body);
        if (r.status == 0) ADD_FAILURE() << "no answer to " << target << ": " << r.error << "; moed's log:\n" << log();
        return r;
    }

private:
    pid_t pid_ = -1;
    std::string socket_;
    fs::path log_;
    bool ready_ = false;
};

void expect_error(const http_reply& r, unsigned status, const std::string& message_part) {
    EXPECT_EQ(r.status, status) << r.body;
    EXPECT_NE(r.error_message().find(message_part), std::string::npos) << r.body;
}

const std::vector<std::string> c_prompts{
    "#include <stdio.h>\n#include <stdlib.h>\n\nint main(int argc, char **argv)\n{\n  if (argc < 2) {\n    fprintf(stderr, "
    "\"usage: %s FILE\\n\", argv[0]);\n    return 1;\n  }\n  FILE *f = fopen(argv[1], \"r\");\n",
    "static int\nparse_number(const char *s, long *out)\n{\n  char *end;\n  errno = 0;\n  *out = strtol(s, &end, 10);\n  "
    "if (errno != 0 || *end != '\\0')\n    return -1;\n  return 0;\n}\n",
    "struct list {\n  struct list *next;\n  void *data;\n};\n\nvoid list_free(struct list *l)\n{\n  while (l) {\n    "
    "struct list *n = l->next;\n    free(l);\n    l = n;\n  }\n}\n"};
const std::vector<std::string> prose_prompts{
    "The rain had stopped by the time she reached the station, and the streets were quiet. She walked past the closed "
    "shops and thought about the letter in her pocket.",
    "In the spring of that year the village held its first fair in a decade. Farmers came from the valley with carts "
    "of apples, and the children ran between the stalls.",
    "He had never been a patient man, but the long winter taught him to wait. Each morning he watched the road from the "
    "window and wondered whether anyone would come."};

std::string create_body(const std::string& name, const std::vector<std::string>& prompts, bool replace = false) {
    json j{{"name", name}, {"prompts", prompts}};
    if (replace) j["replace"] = true;
    return j.dump();
}

std::string completion(const std::string& prompt, int max_tokens, const json& extra = json::object(), bool stream = false) {
    json j{{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}};
    for (auto& [k, v] : extra.items()) j[k] = v;
    return j.dump();
}

TEST(MoedProfiles, CreateListShowUseMatchPruneDelete) {
    const fs::path state = temp_dir() / "state-e2e";
    moed_child moed(state);
    ASSERT_TRUE(moed.ready());

    auto list = moed.request(http::verb::get, "/v1/profiles");
    ASSERT_EQ(list.status, 200u) << list.body;
    EXPECT_EQ(list.json()["data"], json::array());
    expect_error(moed.request(http::verb::post, "/v1/completions", completion("int x;", 4, {{"prune", {{"experts_per_layer", 8}}}})),
                 400, "prune: needs a task profile");

    // Create two profiles.
    auto c = moed.request(http::verb::post, "/v1/profiles", create_body("c", c_prompts));
    ASSERT_EQ(c.status, 201u) << c.body;
    const json cj = c.json();
    EXPECT_EQ(cj["name"], "c");
    EXPECT_EQ(cj["prompts"], 3);
    EXPECT_GT(cj["tokens"].get<int>(), 60);
    EXPECT_EQ(cj["model"], "tinymoe");
    EXPECT_EQ(cj["model_identity"].get<std::string>().rfind("qwen3moe:", 0), 0u) << cj;
    EXPECT_EQ(cj["source"], "api: 3 prompts");
    EXPECT_TRUE(fs::exists(state / "profiles" / "c.profile"));
    ASSERT_EQ(moed.request(http::verb::post, "/v1/profiles", create_body("prose", prose_prompts)).status, 201u);

    list = moed.request(http::verb::get, "/v1/profiles");
    ASSERT_EQ(list.status, 200u);
    ASSERT_EQ(list.json()["data"].size(), 2u) << list.body;
    EXPECT_EQ(list.json()["data"][0]["name"], "c");
    EXPECT_EQ(list.json()["data"][1]["name"], "prose");
    EXPECT_EQ(list.json()["problems"], json::array());

    auto show = moed.request(http::verb::get, "/v1/profiles/c");
    ASSERT_EQ(show.status, 200u) << show.body;
    const json sj = show.json();
    ASSERT_EQ(sj["layers"].size(), 6u);
    for (const auto& layer : sj["layers"]) {
        ASSERT_EQ(layer["experts"].size(), 8u);
        for (std::size_t i = 1; i < 8; ++i)
            EXPECT_GE(layer["experts"][i - 1]["score"].get<double>(), layer["experts"][i]["score"].get<double>());
        EXPECT_GT(layer["experts"][0]["score"].get<double>(), 0.0);
    }

    // Errors.
    expect_error(moed.request(http::verb::post, "/v1/profiles", create_body("c", c_prompts)), 409,
                 "profile 'c' exists; send \"replace\": true to overwrite it");
    expect_error(moed.request(http::verb::post, "/v1/profiles", create_body("a/b", c_prompts)), 400, "name: profile name");
    expect_error(moed.request(http::verb::post, "/v1/profiles", create_body("x", {})), 400, "prompts: must not be empty");
    expect_error(moed.request(http::verb::post, "/v1/profiles", create_body("x", {"ok", ""})), 400,
                 "prompts[1]: must not be empty");
    expect_error(moed.request(http::verb::post, "/v1/profiles", R"({"name":"x"})"), 400, "prompts: required");
    expect_error(moed.request(http::verb::post, "/v1/profiles", R"({"name":"x","prompts":["a"],"colour":1})"), 400,
                 "colour: unknown field");
    expect_error(moed.request(http::verb::get, "/v1/profiles/zz"), 404, "no profile named 'zz'");
    expect_error(moed.request(http::verb::delete_, "/v1/profiles/zz"), 404, "no profile named 'zz'");
    auto put = moed.request(http::verb::put, "/v1/profiles/c", "{}");
    EXPECT_EQ(put.status, 405u);
    EXPECT_EQ(put.allow, "GET, DELETE");
    auto replaced = moed.request(http::verb::post, "/v1/profiles", create_body("c", c_prompts, true));
    EXPECT_EQ(replaced.status, 201u) << replaced.body;

    // Named.
    auto named = moed.request(http::verb::post, "/v1/completions", completion(prose_prompts[0], 8, {{"profile", "prose"}}));
    ASSERT_EQ(named.status, 200u) << named.body;
    const json nm = named.json()["moed"];
    EXPECT_EQ(nm["profile"], "prose");
    EXPECT_EQ(nm["profile_source"], "request");
    EXPECT_GT(nm["profile_similarity"].get<double>(), 0.9);
    EXPECT_TRUE(nm["pruned"].is_null());
    expect_error(moed.request(http::verb::post, "/v1/completions", completion("x", 4, {{"profile", "nope"}})), 400,
                 "profile: no profile named 'nope' (GET /v1/profiles lists them)");

    // Matched: a profile's own kind of text finds it.
    for (const auto& [prompt, want] : {std::pair{c_prompts[1], "c"}, std::pair{prose_prompts[2], "prose"}}) {
        auto r = moed.request(http::verb::post, "/v1/completions", completion(prompt, 4));
        ASSERT_EQ(r.status, 200u) << r.body;
        const json m = r.json()["moed"];
        EXPECT_EQ(m["profile"], want) << m;
        EXPECT_EQ(m["profile_source"], "matched") << m;
        EXPECT_GE(m["profile_similarity"].get<double>(), 0.5) << m;
    }

    // Streams: the first chunk carries "moed", no other does.
    auto streamed = moed.request(http::verb::post, "/v1/completions", completion(c_prompts[0], 8, json::object(), true));
    ASSERT_EQ(streamed.status, 200u);
    const auto events = parse_sse(streamed.body);
    ASSERT_GE(events.data.size(), 3u) << streamed.body;
    const json first = json::parse(events.data[0]);
    ASSERT_TRUE(first.contains("moed")) << events.data[0];
    EXPECT_EQ(first["moed"]["profile"], "c");
    for (std::size_t i = 1; i + 1 < events.data.size(); ++i)
        EXPECT_FALSE(json::parse(events.data[i]).contains("moed")) << events.data[i];

    // Pruning.
    const std::string prompt = "int main(void)\n{\n";
    auto plain = moed.request(http::verb::post, "/v1/completions", completion(prompt, 16));
    auto all = moed.request(http::verb::post, "/v1/completions",
                            completion(prompt, 16, {{"profile", "c"}, {"prune", {{"experts_per_layer", 16}}}}));
    ASSERT_EQ(all.status, 200u) << all.body;
    EXPECT_EQ(all.json()["choices"][0]["text"], plain.json()["choices"][0]["text"]);
    EXPECT_EQ(all.json()["moed"]["pruned"], (json{{"experts_per_layer", 16}, {"profile", "c"}}));
    auto five = moed.request(http::verb::post, "/v1/completions",
                             completion(prompt, 16, {{"profile", "c"}, {"prune", {{"experts_per_layer", 5}}}}));
    ASSERT_EQ(five.status, 200u) << five.body;
    EXPECT_EQ(five.json()["moed"]["pruned"]["experts_per_layer"], 5);
    EXPECT_EQ(five.json()["usage"]["completion_tokens"], 16);
    expect_error(moed.request(http::verb::post, "/v1/completions",
                              completion(prompt, 4, {{"profile", "c"}, {"prune", {{"experts_per_layer", 17}}}})),
                 400, "prune.experts_per_layer 17 is outside [4, 16]");
    expect_error(moed.request(http::verb::post, "/v1/completions", completion(prompt, 4, {{"prune", {{"k", 5}}}})), 400,
                 "prune.k: unknown field");

    // Delete.
    auto del = moed.request(http::verb::delete_, "/v1/profiles/prose");
    ASSERT_EQ(del.status, 200u) << del.body;
    EXPECT_EQ(del.json()["deleted"], true);
    EXPECT_FALSE(fs::exists(state / "profiles" / "prose.profile"));
    EXPECT_EQ(moed.request(http::verb::get, "/v1/profiles").json()["data"].size(), 1u);
}

TEST(MoedProfiles, SurviveRestartAndBadFilesDoNotStopServing) {
    const fs::path state = temp_dir() / "state-restart";
    {
        moed_child moed(state);
        ASSERT_TRUE(moed.ready());
        ASSERT_EQ(moed.request(http::verb::post, "/v1/profiles", create_body("c", c_prompts)).status, 201u);
    }
    std::ofstream(state / "profiles" / "broken.profile") << "MOEDPROF\x01\x00\x00\x00 not really";
    {
        // A valid profile file of another model.
        auto copy = scheduler::read_profile((state / "profiles" / "c.profile").string());
        ASSERT_TRUE(copy) << copy.error().message;
        copy->name = "foreign";
        copy->model_identity = "qwen3moe:0000000000000000";
        ASSERT_TRUE(scheduler::write_profile((state / "profiles" / "foreign.profile").string(), *copy));
    }
    moed_child moed(state);
    ASSERT_TRUE(moed.ready());
    auto list = moed.request(http::verb::get, "/v1/profiles");
    ASSERT_EQ(list.status, 200u);
    const json j = list.json();
    ASSERT_EQ(j["data"].size(), 1u) << j;
    EXPECT_EQ(j["data"][0]["name"], "c");
    ASSERT_EQ(j["problems"].size(), 2u) << j;
    const std::string problems = j["problems"].dump();
    EXPECT_NE(problems.find("broken.profile"), std::string::npos) << problems;
    EXPECT_NE(problems.find("field '"), std::string::npos) << problems;
    EXPECT_NE(problems.find("foreign.profile' was made for model qwen3moe:0000000000000000"), std::string::npos)
        << problems;
    EXPECT_NE(moed.log().find("broken.profile"), std::string::npos);
    auto r = moed.request(http::verb::post, "/v1/completions", completion(c_prompts[2], 4, {{"profile", "c"}}));
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.json()["moed"]["profile"], "c");
    // The foreign file is not usable, but can be deleted by its name.
    expect_error(moed.request(http::verb::post, "/v1/completions", completion("x", 4, {{"profile", "foreign"}})), 400,
                 "no profile named 'foreign'");
    EXPECT_EQ(moed.request(http::verb::delete_, "/v1/profiles/foreign").status, 200u);
    EXPECT_FALSE(fs::exists(state / "profiles" / "foreign.profile"));
}

TEST(MoedProfiles, FullStoreRefusesWith507AndEveryAcceptedProfileLoadsAgain) {
    const fs::path state = temp_dir() / "state-full";
    const fs::path dir = state / "profiles";
    {
        moed_child moed(state);
        ASSERT_TRUE(moed.ready());
        ASSERT_EQ(moed.request(http::verb::post, "/v1/profiles", create_body("c", c_prompts)).status, 201u);
    }
    // Fill the store to its limit with copies of "c" under other names (written directly:
    // creating thousands through the API would only be slower).
    auto c = scheduler::read_profile((dir / "c.profile").string());
    ASSERT_TRUE(c) << c.error().message;
    for (std::size_t i = 1; i < scheduler::max_profiles; ++i) {
        scheduler::profile copy = *c;
        copy.name = fmt::format("p{:04}", i);
        const std::vector<std::byte> bytes = scheduler::serialize_profile(copy);
        std::ofstream(dir / (copy.name + ".profile"), std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    const std::string limit_text = fmt::format("limit of {} profiles", scheduler::max_profiles);
    {
        moed_child moed(state);
        ASSERT_TRUE(moed.ready());
        const json j = moed.request(http::verb::get, "/v1/profiles").json();
        ASSERT_EQ(j["data"].size(), scheduler::max_profiles);
        EXPECT_TRUE(j["problems"].empty()) << j["problems"];
        auto refused = moed.request(http::verb::post, "/v1/profiles", create_body("one-more", prose_prompts));
        expect_error(refused, 507, limit_text);
        EXPECT_EQ(refused.json()["error"]["type"], "insufficient_storage_error");
        EXPECT_FALSE(fs::exists(dir / "one-more.profile"));
        // Replacing at the limit needs no room; deleting one makes room for one.
        EXPECT_EQ(moed.request(http::verb::post, "/v1/profiles", create_body("c", prose_prompts, true)).status, 201u);
        EXPECT_EQ(moed.request(http::verb::delete_, "/v1/profiles/p0001").status, 200u);
        EXPECT_EQ(moed.request(http::verb::post, "/v1/profiles", create_body("one-more", prose_prompts)).status, 201u);
        expect_error(moed.request(http::verb::post, "/v1/profiles", create_body("two-more", prose_prompts)), 507,
                     limit_text);
    }
    moed_child moed(state);
    ASSERT_TRUE(moed.ready());
    const json j = moed.request(http::verb::get, "/v1/profiles").json();
    EXPECT_EQ(j["data"].size(), scheduler::max_profiles);
    EXPECT_TRUE(j["problems"].empty()) << j["problems"];
    EXPECT_EQ(moed.request(http::verb::get, "/v1/profiles/one-more").status, 200u);
    EXPECT_EQ(moed.request(http::verb::get, "/v1/profiles/p4095").status, 200u);
    EXPECT_EQ(moed.request(http::verb::get, "/v1/profiles/p0001").status, 404u);
}

TEST(MoedProfiles, FifoDoesNotBlockStartupAndLeftoverTemporariesAreRemoved) {
    const fs::path state = temp_dir() / "state-odd-files";
    const fs::path dir = state / "profiles";
    {
        moed_child moed(state);
        ASSERT_TRUE(moed.ready());
        ASSERT_EQ(moed.request(http::verb::post, "/v1/profiles", create_body("c", c_prompts)).status, 201u);
    }
    ASSERT_EQ(::mkfifo((dir / "x.profile").c_str(), 0600), 0);
    const fs::path leftover = dir / ".c.profile.tmp.99999";
    fs::copy_file(dir / "c.profile", leftover);
    moed_child moed(state);
    ASSERT_TRUE(moed.ready());
    const json j = moed.request(http::verb::get, "/v1/profiles").json();
    ASSERT_EQ(j["data"].size(), 1u) << j;
    ASSERT_EQ(j["problems"].size(), 1u) << j;
    EXPECT_NE(j["problems"][0].get<std::string>().find("x.profile': not a regular file"), std::string::npos) << j;
    EXPECT_FALSE(fs::exists(leftover));
    EXPECT_NE(moed.log().find(leftover.string()), std::string::npos) << moed.log();
}

}  // namespace
}  // namespace moed::test
