// GGUF reader and writer tests.
#include <gtest/gtest.h>

#include "storage/gguf.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

std::string model_path() { return moed::test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

TEST(gguf_model, reads_bundled_model) {
    auto file = gguf_file::open(model_path());
    ASSERT_TRUE(file) << file.error().message;
    const gguf_file& f = **file;
    EXPECT_EQ(f.tensors().size(), 75u);
    auto arch = f.get_string("general.architecture");
    ASSERT_TRUE(arch) << arch.error().message;
    EXPECT_EQ(*arch, "qwen3moe");
    auto blocks = f.get_uint("qwen3moe.block_count");
    ASSERT_TRUE(blocks) << blocks.error().message;
    EXPECT_EQ(*blocks, 6u);
    auto emb = f.get_tensor("token_embd.weight");
    ASSERT_TRUE(emb) << emb.error().message;
    EXPECT_EQ((*emb)->type, tensor_type::q4_k);
    EXPECT_EQ((*emb)->ne[0], 256);
    EXPECT_EQ((*emb)->ne[1], 4096);
    auto out = f.get_tensor("output.weight");
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_EQ((*out)->type, tensor_type::q6_k);
    auto tokens = f.get_array("tokenizer.ggml.tokens");
    ASSERT_TRUE(tokens) << tokens.error().message;
    EXPECT_EQ((*tokens)->element_type, gguf_value_type::string);
    EXPECT_EQ((*tokens)->values.size(), 4096u);
    for (const auto& t : f.tensors()) {
        EXPECT_EQ(t.offset % f.alignment(), 0u) << t.name;
        EXPECT_LE(t.offset + t.size_bytes, f.file_size()) << t.name;
    }
}

}  // namespace
}  // namespace moed::storage
