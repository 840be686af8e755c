#include "scheduler/profile_store.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "common/log.h"

namespace moed::scheduler {

namespace fs = std::filesystem;

namespace {
constexpr std::string_view k_component = "profiles";
}  // namespace

profile_store::profile_store(std::string state_dir, std::string model_identity, routing_shape shape,
                             match_options options, std::size_t limit)
    : dir_((fs::path(std::move(state_dir)) / "profiles").string()),
      identity_(std::move(model_identity)),
      shape_(shape),
      options_(options),
      limit_(limit),
      matcher_(std::make_shared<profile_matcher>(std::vector<std::shared_ptr<const profile>>{}, options)) {
    MOED_ASSERT(limit_ >= 1);
}

std::string profile_store::path_of(std::string_view name) const {
    return (fs::path(dir_) / (std::string(name) + std::string(profile_extension))).string();
}

result<void> profile_store::load() {
    std::vector<std::shared_ptr<const profile>> loaded;
    std::vector<std::string> problems;
    std::error_code ec;
    if (!fs::exists(dir_, ec)) {
        std::lock_guard lock(mu_);
        profiles_.clear();
        problems_.clear();
        publish_locked();
        return {};
    }
    fs::directory_iterator it(dir_, ec);
    if (ec) return make_error(errc::io, "profile directory '{}': cannot list: {}", dir_, ec.message());
    std::vector<fs::path> files;
    std::vector<fs::path> temporaries;
    for (; it != fs::directory_iterator(); it.increment(ec)) {
        if (ec) return make_error(errc::io, "profile directory '{}': cannot list: {}", dir_, ec.message());
        const fs::path& p = it->path();
        const std::string fname = p.filename().string();
        if (is_profile_temp_name(fname)) temporaries.push_back(p);
        if (p.extension() != profile_extension || fname.starts_with(".")) continue;
        files.push_back(p);
    }
    remove_temporaries(temporaries);
    std::sort(files.begin(), files.end());
    std::size_t next = 0;
    for (; next < files.size() && loaded.size() < limit_; ++next) {
        const fs::path& path = files[next];
        const std::string file = path.string();
        const std::string stem = path.stem().string();
        auto p = read_profile(file);
        if (!p) {
            problems.push_back(p.error().message);
            continue;
        }
        if (p->name != stem) {
            problems.push_back(fmt::format("profile file '{}': field 'name': '{}' does not match the file name '{}'", file,
                                           p->name, stem));
            continue;
        }
        if (auto fits = check_profile_model(*p, file, identity_, shape_); !fits) {
            problems.push_back(fits.error().message);
            continue;
        }
        loaded.push_back(std::make_shared<const profile>(std::move(*p)));
    }
    // Only files put there by hand (or by a version without the limit) get here: add()
    // never stores more than the limit.
    if (next < files.size())
        problems.push_back(fmt::format("profile directory '{}': {} profile files were not loaded, from '{}' on in name "
                                       "order: the store keeps at most the limit of {} profiles",
                                       dir_, files.size() - next, files[next].string(), limit_));
    for (const std::string& m : problems) MOED_LOG_WARN(k_component, "skipped: {}", m);
    MOED_LOG_INFO(k_component, "{} profiles loaded from {}{}", loaded.size(), dir_,
                  problems.empty() ? std::string() : fmt::format(" ({} files skipped)", problems.size()));
    std::lock_guard lock(mu_);
    profiles_ = std::move(loaded);
    problems_ = std::move(problems);
    publish_locked();
    return {};
}

void profile_store::remove_temporaries(const std::vector<fs::path>& temporaries) {
    // Under the lock no add() of this store is between creating its temporary file and
    // renaming it, so every one listed is left over from a write that never finished.
    std::lock_guard lock(mu_);
    for (const fs::path& path : temporaries) {
        std::error_code ec;
        const fs::file_status st = fs::symlink_status(path, ec);
        if (ec) continue;  // gone already
        if (st.type() != fs::file_type::regular) {
            MOED_LOG_WARN(k_component, "'{}' is named like a temporary profile file but is not a regular file; left alone",
                          path.string());
            continue;
        }
        if (::unlink(path.c_str()) == 0)
            MOED_LOG_WARN(k_component, "removed '{}': the temporary file of a profile write that did not finish",
                          path.string());
        else if (errno != ENOENT)
            MOED_LOG_WARN(k_component, "cannot remove the leftover temporary profile file '{}': {}", path.string(),
                          std::strerror(errno));
    }
}

void profile_store::publish_locked() {
    matcher_ = std::make_shared<profile_matcher>(profiles_, options_);
}

std::vector<std::shared_ptr<const profile>> profile_store::list() const {
    std::lock_guard lock(mu_);
    return profiles_;
}

std::shared_ptr<const profile> profile_store::find(std::string_view name) const {
    std::lock_guard lock(mu_);
    for (const auto& p : profiles_) {
        if (p->name == name) return p;
    }
    return nullptr;
}

std::vector<std::string> profile_store::problems() const {
    std::lock_guard lock(mu_);
    return problems_;
}

std::shared_ptr<const profile_matcher> profile_store::matcher() const {
    std::lock_guard lock(mu_);
    return matcher_;
}

result<void> profile_store::check_room(std::string_view name) const {
    std::lock_guard lock(mu_);
    return check_room_locked(name);
}

result<void> profile_store::check_room_locked(std::string_view name) const {
    if (profiles_.size() < limit_) return {};
    const bool stored =
        std::any_of(profiles_.begin(), profiles_.end(), [&](const auto& p) { return p->name == name; });
    if (stored) return {};
    return make_error(errc::no_space,
                      "cannot store profile '{}': the store holds {} profiles, the limit of {} profiles; delete one to "
                      "make room",
                      name, profiles_.size(), limit_);
}

result<add_outcome> profile_store::add(profile p, bool replace) {
    if (auto ok = check_profile_name(p.name); !ok) return unexpected(std::move(ok).error());
    MOED_TRY(check_profile_model(p, path_of(p.name), identity_, shape_));
    std::lock_guard lock(mu_);
    auto it = std::lower_bound(profiles_.begin(), profiles_.end(), p.name,
                               [](const std::shared_ptr<const profile>& a, const std::string& n) { return a->name < n; });
    const bool existing = it != profiles_.end() && (*it)->name == p.name;
    if (existing && !replace) return add_outcome::exists;
    if (!existing) MOED_TRY(check_room_locked(p.name));
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) return make_error(errc::io, "profile directory '{}': cannot create: {}", dir_, ec.message());
    const std::string path = path_of(p.name);
    MOED_TRY(write_profile(path, p));
    auto stored = std::make_shared<const profile>(std::move(p));
    if (existing) *it = std::move(stored);
    else profiles_.insert(it, std::move(stored));
    // A file that was skipped under this name is superseded by the one just written.
    std::erase_if(problems_, [&](const std::string& m) { return m.find("'" + path + "'") != std::string::npos; });
    publish_locked();
    return existing ? add_outcome::replaced : add_outcome::added;
}

result<void> profile_store::remove(std::string_view name) {
    MOED_TRY(check_profile_name(name));
    std::lock_guard lock(mu_);
    auto it = std::find_if(profiles_.begin(), profiles_.end(), [&](const auto& p) { return p->name == name; });
    const std::string path = path_of(name);
    if (it == profiles_.end()) {
        // A file load() skipped (corrupt, another model's) may be deleted by name too.
        std::error_code ec;
        if (!fs::is_regular_file(path, ec)) return make_error(errc::not_found, "no profile named '{}'", name);
    }
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return make_error(errc::io, "profile file '{}': cannot delete: {}", path, std::strerror(errno));
    if (it != profiles_.end()) profiles_.erase(it);
    std::erase_if(problems_, [&](const std::string& m) { return m.find("'" + path + "'") != std::string::npos; });
    publish_locked();
    return {};
}

}  // namespace moed::scheduler
