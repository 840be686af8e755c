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
// A directory holding more files than this is not ours to read whole.
constexpr std::size_t k_max_files = 4096;
}  // namespace

profile_store::profile_store(std::string state_dir, std::string model_identity, routing_shape shape,
                             match_options options)
    : dir_((fs::path(std::move(state_dir)) / "profiles").string()),
      identity_(std::move(model_identity)),
      shape_(shape),
      options_(options),
      matcher_(std::make_shared<profile_matcher>(std::vector<std::shared_ptr<const profile>>{}, options)) {}

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
    for (; it != fs::directory_iterator(); it.increment(ec)) {
        if (ec) return make_error(errc::io, "profile directory '{}': cannot list: {}", dir_, ec.message());
        const fs::path& p = it->path();
        const std::string fname = p.filename().string();
        if (p.extension() != profile_extension || fname.starts_with(".")) continue;  // temporaries start with '.'
        files.push_back(p);
        if (files.size() > k_max_files) {
            problems.push_back(fmt::format("profile directory '{}': more than {} profile files; the rest are ignored",
                                           dir_, k_max_files));
            break;
        }
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& path : files) {
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
    for (const std::string& m : problems) MOED_LOG_WARN(k_component, "skipped: {}", m);
    MOED_LOG_INFO(k_component, "{} profiles loaded from {}{}", loaded.size(), dir_,
                  problems.empty() ? std::string() : fmt::format(" ({} files skipped)", problems.size()));
    std::lock_guard lock(mu_);
    profiles_ = std::move(loaded);
    problems_ = std::move(problems);
    publish_locked();
    return {};
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

result<add_outcome> profile_store::add(profile p, bool replace) {
    if (auto ok = check_profile_name(p.name); !ok) return unexpected(std::move(ok).error());
    MOED_TRY(check_profile_model(p, path_of(p.name), identity_, shape_));
    std::lock_guard lock(mu_);
    auto it = std::lower_bound(profiles_.begin(), profiles_.end(), p.name,
                               [](const std::shared_ptr<const profile>& a, const std::string& n) { return a->name < n; });
    const bool existing = it != profiles_.end() && (*it)->name == p.name;
    if (existing && !replace) return add_outcome::exists;
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
