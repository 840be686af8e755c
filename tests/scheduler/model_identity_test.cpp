// Checks scheduler::model_identity: it has the form "<arch>:<16 hex digits>", is the same
// for the same file opened twice, and changes when a metadata value, a tensor's type or a
// tensor's shape changes (synthetic models rewritten with one edit each).
#include <regex>

#include <gtest/gtest.h>

#include "scheduler/model_identity.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/test_paths.h"

namespace moed::scheduler {
namespace {

std::string identity_of(const std::string& path) {
    auto f = storage::gguf_file::open(path);
    EXPECT_TRUE(f) << f.error().message;
    return f ? model_identity(**f) : std::string();
}

TEST(model_identity, stable_and_well_formed) {
    const std::string bundled = test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf";
    const std::string a = identity_of(bundled);
    EXPECT_EQ(a, identity_of(bundled));
    ASSERT_EQ(a.size(), std::string("qwen3moe:").size() + 16) << a;
    EXPECT_EQ(a.substr(0, 9), "qwen3moe:");
    for (char c : a.substr(9)) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << a;
    EXPECT_NE(a, identity_of(test::synthetic_model("Q4_K_M")));
}

TEST(model_identity, any_header_change_gives_another_identity) {
    const std::string src = test::synthetic_model("Q8_0");
    const std::string base = identity_of(src);
    EXPECT_NE(base, identity_of(test::synthetic_model("F16")));

    const auto dir = test::temp_dir();
    const std::string copy = (dir / "identity-copy.gguf").string();
    test::rewrite_gguf(src, copy, [](test::gguf_contents&) {});
    const std::string same = identity_of(copy);

    const std::string meta = (dir / "identity-meta.gguf").string();
    test::rewrite_gguf(src, meta, [](test::gguf_contents& c) {
        for (auto& [k, v] : c.kv) {
            if (k == "qwen3moe.rope.freq_base") v.data = 20000.0;
        }
    });
    EXPECT_NE(identity_of(meta), same);

    const std::string name = (dir / "identity-name.gguf").string();
    test::rewrite_gguf(src, name, [](test::gguf_contents& c) {
        c.kv.emplace_back("general.name", storage::gguf_value{storage::gguf_value_type::string, std::string("x")});
    });
    EXPECT_NE(identity_of(name), same);

    const std::string type = (dir / "identity-type.gguf").string();
    test::rewrite_gguf(src, type, [](test::gguf_contents& c) {
        for (auto& t : c.tensors) {
            if (t.name == "output_norm.weight") {
                // Same bytes, read as 2x as many f16 values: shape and type both change.
                t.type = tensor_type::f16;
                t.ne[0] *= 2;
            }
        }
    });
    EXPECT_NE(identity_of(type), same);

    const std::string arch = (dir / "identity-arch.gguf").string();
    test::rewrite_gguf(src, arch, [](test::gguf_contents& c) {
        for (auto& [k, v] : c.kv) {
            if (k == "general.architecture") v.data = std::string("weird arch/\xff");
        }
    });
    const std::string weird = identity_of(arch);
    EXPECT_EQ(weird.substr(0, weird.find(':')), "weird_arch__") << "unusual characters are replaced";
}

}  // namespace
}  // namespace moed::scheduler
