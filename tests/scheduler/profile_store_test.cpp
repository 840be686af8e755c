// The profile store's limits and odd files. A store at its profile limit refuses a new
// name (errc::no_space, the message naming the limit) while replacing an existing name still
// works, and after a restart (a new store on the same directory) every profile it accepted
// loads; a directory holding more profile files than the limit (written by hand) loads the
// first ones by name, reports the rest, and never more than the limit. A FIFO, a symbolic
// link and a directory named *.profile are skipped with a message naming them instead of
// blocking or being followed. Temporary files left by a profile write that was killed before
// its rename are removed at load with a log line naming each; other dot files are left alone.
// Small limits are passed to the constructor so the tests stay fast; the daemon uses
// max_profiles.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "scheduler/profile.h"
#include "scheduler/profile_store.h"
#include "tests/support/test_paths.h"

namespace moed::scheduler {
namespace {

namespace fs = std::filesystem;

constexpr routing_shape k_shape{2, 4, 2};
constexpr const char* k_identity = "qwen3moe:00000000000000bb";

profile named(const std::string& name) {
    routing_accumulator acc(k_shape);
    for (std::uint32_t l = 0; l < k_shape.n_layer; ++l)
        acc.add_layer(l, 1, std::vector<float>{0.5f, 0.3f, 0.1f, 0.1f}, std::vector<std::int32_t>{0, 1});
    return make_profile(name, k_identity, "synthetic", "test", 1, 0, acc);
}

bool mentions(const std::vector<std::string>& messages, const std::string& a, const std::string& b) {
    for (const std::string& m : messages) {
        if (m.find(a) != std::string::npos && m.find(b) != std::string::npos) return true;
    }
    return false;
}

class profile_store_limits : public ::testing::Test {
protected:
    void SetUp() override {
        static int n = 0;
        state_ = test::temp_dir() / ("store-state" + std::to_string(++n));
        dir_ = state_ / "profiles";
    }
    profile_store make(std::size_t limit) { return profile_store(state_.string(), k_identity, k_shape, {}, limit); }
    fs::path state_;
    fs::path dir_;
};

TEST_F(profile_store_limits, the_store_default_is_the_named_constant) {
    const profile_store store(state_.string(), k_identity, k_shape);
    EXPECT_EQ(store.limit(), max_profiles);
}

TEST_F(profile_store_limits, a_full_store_refuses_new_names_and_everything_accepted_loads_again) {
    constexpr std::size_t limit = 5;
    std::vector<std::string> accepted;
    {
        profile_store store = make(limit);
        ASSERT_TRUE(store.load());
        for (std::size_t i = 0; i < limit; ++i) {
            const std::string name = fmt::format("p{}", i);
            EXPECT_TRUE(store.check_room(name));
            auto added = store.add(named(name), false);
            ASSERT_TRUE(added) << added.error().message;
            ASSERT_EQ(*added, add_outcome::added);
            accepted.push_back(name);
        }
        // One more new name: refused, naming the limit, and nothing written.
        auto room = store.check_room("extra");
        ASSERT_FALSE(room);
        EXPECT_EQ(room.error().code, errc::no_space);
        auto refused = store.add(named("extra"), false);
        ASSERT_FALSE(refused);
        EXPECT_EQ(refused.error().code, errc::no_space);
        EXPECT_NE(refused.error().message.find("limit of 5 profiles"), std::string::npos) << refused.error().message;
        EXPECT_FALSE(fs::exists(dir_ / "extra.profile"));
        EXPECT_EQ(store.find("extra"), nullptr);
        EXPECT_EQ(store.list().size(), limit);
        // Replacing a stored name does not need room.
        EXPECT_TRUE(store.check_room("p3"));
        auto replaced = store.add(named("p3"), true);
        ASSERT_TRUE(replaced) << replaced.error().message;
        EXPECT_EQ(*replaced, add_outcome::replaced);
    }
    // A restart: every accepted profile loads, nothing is reported.
    profile_store restarted = make(limit);
    ASSERT_TRUE(restarted.load());
    ASSERT_EQ(restarted.list().size(), limit);
    for (const std::string& name : accepted) EXPECT_NE(restarted.find(name), nullptr) << name;
    EXPECT_TRUE(restarted.problems().empty());
    EXPECT_FALSE(restarted.add(named("extra"), false));
    // Removing one makes room for one.
    ASSERT_TRUE(restarted.remove("p0"));
    auto added = restarted.add(named("extra"), false);
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_FALSE(restarted.add(named("extra2"), false));
}

TEST_F(profile_store_limits, more_files_than_the_limit_load_the_first_by_name_and_report_the_rest) {
    constexpr std::size_t limit = 3;
    fs::create_directories(dir_);
    // A corrupt file sorts first: it does not take one of the limit's places.
    std::ofstream(dir_ / "a-corrupt.profile") << "MOEDPROF garbage";
    for (const char* name : {"e", "b", "d", "c", "f"})
        ASSERT_TRUE(write_profile((dir_ / (std::string(name) + ".profile")).string(), named(name)));
    profile_store store = make(limit);
    ASSERT_TRUE(store.load());
    const auto list = store.list();
    ASSERT_EQ(list.size(), limit);
    EXPECT_EQ(list[0]->name, "b");
    EXPECT_EQ(list[1]->name, "c");
    EXPECT_EQ(list[2]->name, "d");
    const auto problems = store.problems();
    EXPECT_TRUE(mentions(problems, (dir_ / "a-corrupt.profile").string(), "field")) << ::testing::PrintToString(problems);
    EXPECT_TRUE(mentions(problems, "2 profile files", "limit of 3 profiles")) << ::testing::PrintToString(problems);
    EXPECT_TRUE(mentions(problems, (dir_ / "e.profile").string(), "not loaded")) << ::testing::PrintToString(problems);
    EXPECT_FALSE(store.add(named("g"), false));
    // The files beyond the limit stay on disk.
    EXPECT_TRUE(fs::exists(dir_ / "e.profile"));
    EXPECT_TRUE(fs::exists(dir_ / "f.profile"));
}

TEST_F(profile_store_limits, fifo_symlink_and_directory_named_profile_are_skipped) {
    {
        profile_store store = make(8);
        ASSERT_TRUE(store.add(named("good"), false));
    }
    // Opening a FIFO for reading blocks until a writer comes; the store must not wait.
    ASSERT_EQ(::mkfifo((dir_ / "x.profile").c_str(), 0600), 0);
    fs::create_symlink(dir_ / "good.profile", dir_ / "link.profile");
    fs::create_directory(dir_ / "sub.profile");
    profile_store store = make(8);
    ASSERT_TRUE(store.load());
    ASSERT_EQ(store.list().size(), 1u);
    EXPECT_EQ(store.list()[0]->name, "good");
    const auto problems = store.problems();
    EXPECT_EQ(problems.size(), 3u) << ::testing::PrintToString(problems);
    EXPECT_TRUE(mentions(problems, (dir_ / "x.profile").string(), "not a regular file"))
        << ::testing::PrintToString(problems);
    EXPECT_TRUE(mentions(problems, (dir_ / "link.profile").string(), "symbolic link"))
        << ::testing::PrintToString(problems);
    EXPECT_TRUE(mentions(problems, (dir_ / "sub.profile").string(), "not a regular file"))
        << ::testing::PrintToString(problems);
}

TEST(profile_file, read_profile_refuses_a_fifo_without_blocking) {
    const fs::path fifo = test::temp_dir() / "lonely.profile";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    auto r = read_profile(fifo.string());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::bad_file);
    EXPECT_NE(r.error().message.find(fifo.string()), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos) << r.error().message;
}

TEST(profile_file, temporary_names_are_recognised) {
    const std::string tmp = profile_temp_path("/s/profiles/abc.profile");
    EXPECT_EQ(fs::path(tmp).parent_path(), fs::path("/s/profiles"));
    EXPECT_TRUE(is_profile_temp_name(fs::path(tmp).filename().string())) << tmp;
    EXPECT_TRUE(is_profile_temp_name(".abc.profile.tmp.12"));
    EXPECT_FALSE(is_profile_temp_name("abc.profile"));
    EXPECT_FALSE(is_profile_temp_name(".abc.profile.tmp."));
    EXPECT_FALSE(is_profile_temp_name(".abc.profile.tmp.12x"));
    EXPECT_FALSE(is_profile_temp_name(".bashrc"));
    EXPECT_FALSE(is_profile_temp_name("..profile.tmp.1"));
    EXPECT_FALSE(is_profile_temp_name(".a/b.profile.tmp.1"));
}

TEST_F(profile_store_limits, leftover_temporary_files_are_removed_at_load_with_a_log_line) {
    {
        profile_store store = make(8);
        ASSERT_TRUE(store.add(named("kept"), false));
    }
    // What a write killed at fsync or rename leaves: its temporary file, complete or not.
    const fs::path killed_at_rename = profile_temp_path((dir_ / "kept.profile").string());
    const fs::path killed_at_fsync = dir_ / ".other.profile.tmp.4242";
    fs::copy_file(dir_ / "kept.profile", killed_at_rename);
    std::ofstream(killed_at_fsync) << "MOEDPROF partial";
    std::ofstream(dir_ / ".notes") << "someone else's dot file";

    ::testing::internal::CaptureStderr();
    profile_store store = make(8);
    const auto loaded = store.load();
    const std::string log = ::testing::internal::GetCapturedStderr();
    ASSERT_TRUE(loaded) << loaded.error().message;
    EXPECT_FALSE(fs::exists(killed_at_rename));
    EXPECT_FALSE(fs::exists(killed_at_fsync));
    EXPECT_TRUE(fs::exists(dir_ / ".notes"));
    EXPECT_NE(log.find(killed_at_rename.string()), std::string::npos) << log;
    EXPECT_NE(log.find(killed_at_fsync.string()), std::string::npos) << log;
    EXPECT_NE(log.find("removed"), std::string::npos) << log;
    ASSERT_EQ(store.list().size(), 1u);
    EXPECT_TRUE(store.problems().empty()) << ::testing::PrintToString(store.problems());
}

}  // namespace
}  // namespace moed::scheduler
