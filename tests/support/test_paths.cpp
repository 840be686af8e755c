#include "tests/support/test_paths.h"

#include <unistd.h>

#include <cstdlib>
#include <system_error>

namespace moed::test {

std::string shared_models_dir() {
    if (const char* env = std::getenv("MOED_SHARED_MODELS"); env && *env) return env;
    std::error_code ec;
    if (std::filesystem::is_directory(MOED_SHARED_MODELS_DIR, ec)) return MOED_SHARED_MODELS_DIR;
    return {};
}

namespace {
struct temp_dir_holder {
    std::filesystem::path path;
    temp_dir_holder() {
        path = std::filesystem::temp_directory_path() / ("moed-test-" + std::to_string(::getpid()));
        std::filesystem::create_directories(path);
    }
    ~temp_dir_holder() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};
}  // namespace

std::filesystem::path temp_dir() {
    static temp_dir_holder holder;
    return holder.path;
}

}  // namespace moed::test
