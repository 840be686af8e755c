// Where tests find their data. Shared-model files (the F16 golden model) exist only where
// ../shared/models is present; tests that need them skip with a reason elsewhere.
#pragma once

#include <filesystem>
#include <string>

namespace moed::test {

// The bundled data directory (models/ in the source tree).
inline std::string models_dir() { return MOED_MODELS_DIR; }
// The tests/ directory of the source tree (fixtures live under it).
inline std::string tests_dir() { return MOED_TESTS_DIR; }
// ../shared/models, overridable with MOED_SHARED_MODELS; empty when absent.
std::string shared_models_dir();
// A scratch directory unique to this test process, removed at exit.
std::filesystem::path temp_dir();
// The golden file of `model` (models/golden/<isa>/<model>.json) for the kernels' active
// level, or where that level has none the nearest level that has one: the trained tinymoe
// model's ids agree across levels, so tests other than the golden test may read any level's
// file. Empty when no level has one.
std::string golden_file(const std::string& model);

}  // namespace moed::test
