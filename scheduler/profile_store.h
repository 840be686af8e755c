// The task profiles of the served model, in memory and in <state_dir>/profiles/.
//
// load() reads every <name>.profile file of the directory. A file that cannot be used (it
// is corrupt, of an unsupported version, made for another model, or named differently
// inside) is logged, skipped and listed in problems(): one bad file never stops the others
// or the daemon. add() writes a file atomically before the profile becomes visible;
// remove() deletes it. Every change publishes a new matcher snapshot, so a request matched
// while profiles change sees either the old set or the new one, whole.
// Threads: every member may be called from any thread (one mutex; file I/O happens under
// it, which is fine for files of a few hundred kilobytes changed by an operator).
#pragma once

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

class profile_store {
public:
    // Nothing is read until load(). `model_identity` and `shape` are the served model's.
    profile_store(std::string state_dir, std::string model_identity, routing_shape shape, match_options options = {});

    // (Re)reads the directory; a missing directory is an empty set. Errors only when the
    // directory exists but cannot be listed (the daemon then serves without profiles).
    result<void> load();

    const std::string& directory() const noexcept { return dir_; }
    const std::string& model_identity() const noexcept { return identity_; }
    const routing_shape& shape() const noexcept { return shape_; }
    std::string path_of(std::string_view name) const;

    // Sorted by name.
    std::vector<std::shared_ptr<const profile>> list() const;
    std::shared_ptr<const profile> find(std::string_view name) const;
    // One message per file load() skipped (each names the file and what is wrong).
    std::vector<std::string> problems() const;
    // The matcher over the current set (never null; empty without profiles).
    std::shared_ptr<const profile_matcher> matcher() const;

    // Stores `p` (its name checked, its identity and shape the model's). An existing profile
    // of that name is kept and `exists` returned unless `replace`. Errors: bad name or model
    // (invalid_argument), the directory or file cannot be written (io).
    result<add_outcome> add(profile p, bool replace);
    // Deletes the profile and its file. errc::not_found when there is no such profile.
    result<void> remove(std::string_view name);

private:
    void publish_locked();

    const std::string dir_;
    const std::string identity_;
    const routing_shape shape_;
    const match_options options_;

    mutable std::mutex mu_;
    std::vector<std::shared_ptr<const profile>> profiles_;  // guarded by mu_, sorted by name
    std::vector<std::string> problems_;                      // guarded by mu_
    std::shared_ptr<const profile_matcher> matcher_;         // guarded by mu_
};

}  // namespace moed::scheduler
