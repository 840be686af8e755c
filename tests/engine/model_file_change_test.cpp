// A model with resident experts serves from its own copy of the weights: truncating the file
// or overwriting it with other bytes after load (what a user's `truncate` or `cp` does while
// moed serves) changes nothing, and in particular never faults the process (the file used to
// stay mapped, so a truncated page raised SIGBUS). Each case copies the bundled model to a
// temporary file, loads it, damages the file, then generates the golden ids.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

namespace fs = std::filesystem;

const std::string model_name = "tinymoe-qwen3moe-Q4_K_M";

nlohmann::json golden() {
    std::ifstream in(test::golden_file(model_name));
    return nlohmann::json::parse(in);
}

std::string copy_of_model(const std::string& tag) {
    const fs::path dst = test::temp_dir() / ("file-change-" + tag + ".gguf");
    fs::copy_file(test::models_dir() + "/" + model_name + ".gguf", dst, fs::copy_options::overwrite_existing);
    return dst.string();
}

void expect_golden(model& m) {
    kernels::compute_pool pool(2);
    evaluator eval(m, pool, 64);
    kv_cache cache(m.hparams().n_layer, 256, m.hparams().n_head_kv, m.hparams().head_dim);
    const auto g = golden();
    ASSERT_FALSE(g["cases"].empty());
    for (const auto& c : g["cases"]) {
        generation_request request;
        request.prompt = c["prompt_tokens"].get<std::vector<token_id>>();
        request.n_predict = static_cast<std::int32_t>(c["tokens"].size());
        request.stop_at_eog = false;
        auto generated = generate(eval, m, cache, request);
        ASSERT_TRUE(generated) << generated.error().message;
        EXPECT_EQ(generated->tokens, c["tokens"].get<std::vector<token_id>>());
    }
}

TEST(model_file_change, resident_model_survives_truncation) {
    const std::string path = copy_of_model("truncate");
    auto loaded = model::load(path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    EXPECT_FALSE((*loaded)->file().mapped());
    // Shorter than the header: every tensor byte is gone from the file.
    fs::resize_file(path, 4096);
    expect_golden(**loaded);
}

TEST(model_file_change, resident_model_survives_other_bytes_written_over_it) {
    const std::string path = copy_of_model("overwrite");
    auto loaded = model::load(path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    const auto size = fs::file_size(path);
    {
        // In place (same inode), as cp does.
        std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
        const std::string zeros(static_cast<std::size_t>(size), '\0');
        f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
    }
    expect_golden(**loaded);
}

TEST(model_file_change, resident_weights_are_an_owned_copy_of_the_data_section) {
    const std::string path = copy_of_model("image");
    auto loaded = model::load(path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    const model& m = **loaded;
    EXPECT_EQ(m.weights_image().size(), m.file().file_size() - m.file().data_offset());
    // The expert a handle gives points into the copy, not into any mapping of the file.
    auto h = const_cast<model&>(m).experts().acquire(ExpertId{0, 0}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    const auto* p = static_cast<const std::byte*>(h->weights().gate.data);
    EXPECT_GE(p, m.weights_image().data());
    EXPECT_LT(p, m.weights_image().data() + m.weights_image().size());
}

}  // namespace
}  // namespace moed::engine
