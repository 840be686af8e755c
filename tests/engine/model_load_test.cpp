// Checks that model loading rejects bad files with errors that name the file and the key or
// tensor at fault, and accepts the bundled model with the right hyper-parameters. Broken
// variants are made by rewriting a valid synthetic model with one change each. Load progress
// (load_options::on_progress) starts at zero, rises in pieces of at most piece_bytes and ends
// at its total, which is the file's tensor data when experts are resident and the dense
// weights' bytes when they are tiered.
#include <gtest/gtest.h>

#include "engine/model.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

TEST(model_load, bundled_tinymoe_hparams) {
    auto m = model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
    ASSERT_TRUE(m) << m.error().message;
    const model_hparams& hp = (*m)->hparams();
    EXPECT_EQ(hp.n_layer, 6u);
    EXPECT_EQ(hp.n_embd, 256);
    EXPECT_EQ(hp.n_head, 4);
    EXPECT_EQ(hp.n_head_kv, 2);
    EXPECT_EQ(hp.head_dim, 64);
    EXPECT_EQ(hp.n_expert, 16u);
    EXPECT_EQ(hp.n_expert_used, 4u);
    EXPECT_EQ(hp.n_ff_exp, 256);
    EXPECT_EQ(hp.n_vocab, 4096);
    EXPECT_FLOAT_EQ(hp.rope_freq_base, 10000.0f);
    EXPECT_GT((*m)->expert_bytes(), (*m)->dense_bytes());
}

struct broken_case {
    const char* name;
    std::function<void(test::gguf_contents&)> edit;
    errc code;
    std::vector<std::string> mentions;
};

void expect_load_error(const broken_case& bc) {
    const std::string src = test::synthetic_model("Q8_0");
    const std::string dst = (test::temp_dir() / (std::string("broken-") + bc.name + ".gguf")).string();
    test::rewrite_gguf(src, dst, bc.edit);
    auto m = model::load(dst);
    ASSERT_FALSE(m) << bc.name << " loaded";
    EXPECT_EQ(m.error().code, bc.code) << bc.name << ": " << m.error().message;
    EXPECT_NE(m.error().message.find(dst), std::string::npos) << m.error().message;
    for (const auto& word : bc.mentions) {
        EXPECT_NE(m.error().message.find(word), std::string::npos) << bc.name << ": '" << word << "' not in: " << m.error().message;
    }
}

void set_kv(test::gguf_contents& c, const std::string& key, storage::gguf_value v) {
    for (auto& [k, value] : c.kv) {
        if (k == key) {
            value = std::move(v);
            return;
        }
    }
    c.kv.emplace_back(key, std::move(v));
}

void erase_kv(test::gguf_contents& c, const std::string& key) {
    std::erase_if(c.kv, [&](const auto& kv) { return kv.first == key; });
}

storage::gguf_value string_value(std::string s) {
    storage::gguf_value v;
    v.type = storage::gguf_value_type::string;
    v.data = std::move(s);
    return v;
}

storage::gguf_value u32_value(std::uint64_t x) {
    storage::gguf_value v;
    v.type = storage::gguf_value_type::u32;
    v.data = x;
    return v;
}

TEST(model_load, broken_files_are_clear_errors) {
    const std::vector<broken_case> cases = {
        {"wrong-arch", [](auto& c) { set_kv(c, "general.architecture", string_value("gpt2")); },
         errc::unsupported, {"general.architecture", "gpt2", "qwen3moe, llama, qwen2moe, olmoe"}},
        // A llama file without experts is a dense model, said so (not a missing-key error).
        {"dense-llama", [](auto& c) { set_kv(c, "general.architecture", string_value("llama")); },
         errc::unsupported, {"llama.expert_count", "dense"}},
        {"missing-arch", [](auto& c) { erase_kv(c, "general.architecture"); }, errc::not_found, {"general.architecture"}},
        {"missing-expert-count", [](auto& c) { erase_kv(c, "qwen3moe.expert_count"); }, errc::not_found,
         {"qwen3moe.expert_count"}},
        {"zero-layers", [](auto& c) { set_kv(c, "qwen3moe.block_count", u32_value(0)); }, errc::bad_file,
         {"qwen3moe.block_count"}},
        {"arch-as-number", [](auto& c) { set_kv(c, "general.architecture", u32_value(3)); }, errc::bad_file,
         {"general.architecture"}},
        {"used-exceeds-experts", [](auto& c) { set_kv(c, "qwen3moe.expert_used_count", u32_value(99)); },
         errc::bad_file, {"expert_used_count"}},
        {"missing-tensor",
         [](auto& c) { std::erase_if(c.tensors, [](const auto& t) { return t.name == "blk.1.attn_q.weight"; }); },
         errc::not_found, {"blk.1.attn_q.weight"}},
        {"missing-experts",
         [](auto& c) { std::erase_if(c.tensors, [](const auto& t) { return t.name == "blk.0.ffn_up_exps.weight"; }); },
         errc::not_found, {"blk.0.ffn_up_exps.weight"}},
        {"wrong-shape",
         [](auto& c) {
             for (auto& t : c.tensors) {
                 if (t.name == "blk.0.attn_k.weight") {
                     t.ne = {t.ne[0], t.ne[1] / 2};
                     t.data.resize(t.data.size() / 2);
                 }
             }
         },
         errc::bad_file, {"blk.0.attn_k.weight", "shape"}},
        {"unsupported-tokenizer", [](auto& c) { set_kv(c, "tokenizer.ggml.model", string_value("bert")); },
         errc::unsupported, {"tokenizer.ggml.model"}},
    };
    for (const auto& bc : cases) {
        SCOPED_TRACE(bc.name);
        expect_load_error(bc);
    }
}

struct progress_call {
    std::uint64_t done;
    std::uint64_t total;
};

std::vector<progress_call> load_with_progress(std::optional<budget_spec> budget, std::uint64_t piece_bytes,
                                              std::unique_ptr<model>& out) {
    std::vector<progress_call> calls;
    load_options o;
    o.host_budget = budget;
    o.tier.lock = storage::memory_lock::off;
    o.piece_bytes = piece_bytes;
    o.on_progress = [&calls](std::uint64_t done, std::uint64_t total) { calls.push_back({done, total}); };
    auto m = model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf", o);
    EXPECT_TRUE(m) << m.error().message;
    if (m) out = std::move(*m);
    return calls;
}

void expect_rising_to_total(const std::vector<progress_call>& calls, std::uint64_t piece_bytes) {
    ASSERT_GE(calls.size(), 3u);
    EXPECT_EQ(calls.front().done, 0u);
    const std::uint64_t total = calls.front().total;
    EXPECT_EQ(calls.back().done, total);
    for (std::size_t i = 1; i < calls.size(); ++i) {
        EXPECT_EQ(calls[i].total, total);
        EXPECT_GT(calls[i].done, calls[i - 1].done) << i;
        EXPECT_LE(calls[i].done - calls[i - 1].done, piece_bytes) << i;
    }
}

TEST(model_load, progress_rises_in_pieces_to_the_copy_total) {
    constexpr std::uint64_t piece = 256u << 10;
    std::unique_ptr<model> resident;
    const auto calls = load_with_progress(std::nullopt, piece, resident);
    ASSERT_TRUE(resident);
    expect_rising_to_total(calls, piece);
    const std::uint64_t data_bytes = resident->file().file_size() - resident->file().data_offset();
    // Every tensor is read (alignment padding inside a run may be read with it).
    EXPECT_LE(calls.back().total, data_bytes);
    EXPECT_GE(calls.back().total, resident->dense_bytes() + resident->expert_bytes());
    EXPECT_GE(calls.size(), data_bytes / piece);

    std::unique_ptr<model> tiered;
    const auto tiered_calls = load_with_progress(budget_spec{0, 0.5, true}, 16u << 10, tiered);
    ASSERT_TRUE(tiered);
    expect_rising_to_total(tiered_calls, 16u << 10);
    EXPECT_EQ(tiered_calls.back().total, tiered->dense_bytes()) << "tiered: only the dense weights are copied";
}

TEST(model_load, missing_file_is_an_error) {
    auto m = model::load("/nonexistent/model.gguf");
    ASSERT_FALSE(m);
    EXPECT_NE(m.error().message.find("/nonexistent/model.gguf"), std::string::npos);
}

}  // namespace
}  // namespace moed::engine
