#include "tests/support/test_paths.h"

#include <unistd.h>

#include <cstdlib>
#include <system_error>
#include <vector>

#include "kernels/cpu/cpu_features.h"

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

std::string golden_file(const std::string& model) {
    using kernels::isa;
    const int active = static_cast<int>(kernels::active_isa());
    // The active level first, then the levels below it, then the ones above.
    std::vector<isa> order;
    for (int l = active; l >= 0; --l) order.push_back(static_cast<isa>(l));
    for (int l = active + 1; l <= static_cast<int>(isa::avx512); ++l) order.push_back(static_cast<isa>(l));
    for (isa level : order) {
        const std::string path = models_dir() + "/golden/" + std::string(kernels::isa_name(level)) + "/" + model + ".json";
        std::error_code ec;
        if (std::filesystem::is_regular_file(path, ec)) return path;
    }
    return {};
}

}  // namespace moed::test
