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

}  // namespace moed::test
