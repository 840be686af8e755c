// The task profiles of the served model, in memory and in <state_dir>/profiles/.
//
// load() reads every <name>.profile file of the directory. A file that cannot be used (it
// is corrupt, of an unsupported version, made for another model, named differently inside,
// or not a regular file) is logged, skipped and listed in problems(): one bad file never
// stops the others or the daemon. add() writes a file atomically before the profile becomes
// visible; remove() deletes it.
// A store holds at most limit() profiles (max_profiles unless a test asks for fewer): add()
// refuses a new name beyond it and load() loads no more than it, so every profile add()
// accepted loads again after a restart. Every change publishes a new matcher snapshot, so a request matched
// while profiles change sees either the old set or the new one, whole.
// Threads: every member may be called from any thread (one mutex; file I/O happens under
// it, which is fine for files of a few hundred kilobytes changed by an operator).
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "scheduler/profile.h"
#include "scheduler/profile_matcher.h"

namespace moed::scheduler {

enum class add_outcome : std::uint8_t { added = 0, replaced = 1, exists = 2 };

// The most profiles a store holds, at load and at add alike. Each costs its scores and
// n-grams in memory and a place in every match, so the set is bounded.
inline constexpr std::size_t max_profiles = 4096;

class profile_store {
public:
    // Nothing is read until load(). `model_identity` and `shape` are the served model's;
    // `limit` (>= 1) is the most profiles the store holds.
    profile_store(std::string state_dir, std::string model_identity, routing_shape shape, match_options options = {},
                  std::size_t limit = max_profiles);

    // (Re)reads the directory; a missing directory is an empty set. Errors only when the
    // directory exists but cannot be listed (the daemon then serves without profiles).
    // Profile files are read in name order until limit() have loaded; files left over past
    // the limit are reported in problems(), not read and not deleted. Temporary files of
    // an interrupted write_profile() are removed, each with a log line naming it.
    result<void> load();

    const std::string& directory() const noexcept { return dir_; }
    const std::string& model_identity() const noexcept { return identity_; }
    const routing_shape& shape() const noexcept { return shape_; }
    std::size_t limit() const noexcept { return limit_; }
    std::string path_of(std::string_view name) const;

    // Sorted by name.
    std::vector<std::shared_ptr<const profile>> list() const;
    std::shared_ptr<const profile> find(std::string_view name) const;
    // One message per file load() skipped (each names the file and what is wrong).
    std::vector<std::string> problems() const;
    // The matcher over the current set (never null; empty without profiles).
    std::shared_ptr<const profile_matcher> matcher() const;

    // Whether add() has room for a profile named `name`: a stored name always has (it is
    // replaced), a new one only below limit(). errc::no_space, naming the limit, when not.
    // A check ahead of expensive work; add() checks again.
    result<void> check_room(std::string_view name) const;
    // Stores `p` (its name checked, its identity and shape the model's). An existing profile
    // of that name is kept and `exists` returned unless `replace`. Errors: bad name or model
    // (invalid_argument), a new name while the store holds limit() profiles (no_space),
    // the directory or file cannot be written (io).
    result<add_outcome> add(profile p, bool replace);
    // Deletes the profile and its file. errc::not_found when there is no such profile.
    result<void> remove(std::string_view name);

private:
    void publish_locked();
    void remove_temporaries(const std::vector<std::filesystem::path>& temporaries);
    result<void> check_room_locked(std::string_view name) const;

    const std::string dir_;
    const std::string identity_;
    const routing_shape shape_;
    const match_options options_;
    const std::size_t limit_;

    mutable std::mutex mu_;
    std::vector<std::shared_ptr<const profile>> profiles_;  // guarded by mu_, sorted by name
    std::vector<std::string> problems_;                      // guarded by mu_
    std::shared_ptr<const profile_matcher> matcher_;         // guarded by mu_
};

}  // namespace moed::scheduler
