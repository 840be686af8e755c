// Checks deepseek2 (multi-head latent attention; the v2-lite variant without q-LoRA and with
// softmax routing, the v3 variant with q-LoRA, sigmoid routing with a selection bias in
// groups, and v2-lite as older converters wrote it, decompressed through attn_kv_b) and
// glm4moe (partial NEOX RoPE with q/k/v biases; the air variant, and the qk-norm variant
// with a multi-token prediction block appended) on small synthetic models:
// - the hyper-parameters as the files give them: the prediction block not counted, the
//   leading dense layer, the MoE layers, MLA's sizes, the routing, the attention scale from
//   YaRN and DeepSeek's mscale (as llama.cpp computes it);
// - the forward pass gives bitwise the same logits in one batch, in chunks and token by token,
//   batched with another sequence, and on 1 or 3 threads;
// - routing events, layer starts, the lookahead and expert acquisitions count MoE layers only
//   (0 .. n_moe_layer - 1), each routed expert is acquired once per layer and released, the
//   distribution sums to one and ranks the chosen experts first;
// - experts tiered at a 25% host budget give the resident logits bit for bit, and the tiers
//   hold MoE layers only; the prediction block's tensors are not copied;
// - absorbed MLA's cache holds one latent row per position, the decompressed form's per-head
//   rows, and a cache of another shape is an error;
// - bad keys and tensors are errors naming them.
// llama.cpp parity (greedy ids) is checked by the architecture goldens, not here.
#include <algorithm>
#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

struct variant {
    const char* arch;
    const char* name;
};

// Three layers (one dense) of a small shape; v3 has eight heads (the eight-head attention
// kernel), the others four; glm4moe's qk-norm variant appends a prediction block.
tools::synth_shape shape_of(const variant& v) {
    tools::synth_shape s;
    s.layers = 3;
    s.embd = 256;
    s.heads = std::string(v.name) == "v3" ? 8 : 4;
    s.kv_heads = 2;
    s.head_dim = 64;
    s.experts = 8;
    s.experts_used = 2;
    s.ff = 128;
    s.dense_ff = 256;
    s.vocab = 512;
    s.ctx = 256;
    s.nextn_layers = std::string(v.name) == "qk-norm" ? 1 : 0;
    return s;
}

std::string model_path(const variant& v, const std::string& type) {
    static std::map<std::string, std::string> made;
    const std::string key = std::string(v.arch) + "-" + v.name + "-" + type;
    if (auto it = made.find(key); it != made.end()) return it->second;
    const std::string path = (test::temp_dir() / (key + ".gguf")).string();
    tools::synth_options o;
    o.arch = v.arch;
    o.variant = v.name;
    o.type = type;
    o.seed = 5;
    auto done = tools::synthesize_model(path, shape_of(v), o);
    EXPECT_TRUE(done) << done.error().message;
    made[key] = path;
    return path;
}

std::unique_ptr<model> load(const variant& v, const std::string& type, const load_options& options = {}) {
    auto m = model::load(model_path(v, type), options);
    EXPECT_TRUE(m) << m.error().message;
    return m ? std::move(m).value() : nullptr;
}

kv_cache make_cache(const model& m, std::int64_t n_ctx = 96) { return kv_cache(kv_shape_of(m.hparams()), n_ctx); }

std::vector<token_id> sample_tokens(std::int64_t n, std::int64_t n_vocab, std::int64_t salt = 0) {
    std::vector<token_id> t;
    for (std::int64_t i = 0; i < n; ++i) t.push_back(static_cast<token_id>((i * 7919 + 13 + salt * 101) % n_vocab));
    return t;
}

const variant glm_air{"glm4moe", "air"};
const variant glm_qk_norm{"glm4moe", "qk-norm"};
const variant ds_v2_lite{"deepseek2", "v2-lite"};
const variant ds_v3{"deepseek2", "v3"};
const variant ds_legacy{"deepseek2", "v2-lite-legacy"};

TEST(deepseek_glm, glm4moe_hparams) {
    for (const variant& v : {glm_air, glm_qk_norm}) {
        auto m = load(v, "F32");
        ASSERT_TRUE(m);
        const model_hparams& hp = m->hparams();
        EXPECT_EQ(hp.n_layer, 3u) << v.name;  // the prediction block is not a layer
        EXPECT_EQ(hp.n_layer_dense_lead, 1u);
        EXPECT_EQ(hp.n_moe_layer(), 2u);
        EXPECT_EQ(hp.n_ff, 256);
        EXPECT_EQ(hp.n_ff_exp, 128);
        EXPECT_EQ(hp.head_dim, 64);
        EXPECT_EQ(hp.n_rot, 32);
        EXPECT_EQ(hp.rope, rope_kind::neox);
        EXPECT_EQ(hp.qk_norm, std::string(v.name) == "qk-norm" ? qk_norm_kind::per_head : qk_norm_kind::none);
        EXPECT_TRUE(hp.qkv_bias);
        EXPECT_FALSE(hp.mla.enabled());
        EXPECT_EQ(hp.routing.gating, gating_kind::sigmoid);
        EXPECT_TRUE(hp.routing.normalize);
        EXPECT_TRUE(hp.routing.selection_bias);
        EXPECT_FLOAT_EQ(hp.routing.scale, 2.5f);
        EXPECT_EQ(hp.routing.n_group, 0u);
        EXPECT_EQ(hp.shared_expert.n_ff, 128);
        EXPECT_FALSE(hp.shared_expert.gated);
        EXPECT_EQ(hp.kq_scale, 0.0f);  // 1 / sqrt(head_dim)
        EXPECT_EQ(m->experts_layout().n_layer, 2u);
        EXPECT_EQ(m->layer(0).router.data, nullptr);  // dense: no router
        EXPECT_NE(m->layer(0).ffn_gate.data, nullptr);
        EXPECT_NE(m->layer(1).selection_bias, nullptr);
    }
}

TEST(deepseek_glm, deepseek2_hparams) {
    for (const variant& v : {ds_v2_lite, ds_v3, ds_legacy}) {
        SCOPED_TRACE(v.name);
        auto m = load(v, "F32");
        ASSERT_TRUE(m);
        const model_hparams& hp = m->hparams();
        const bool v3 = std::string(v.name) == "v3";
        const bool legacy = std::string(v.name) == "v2-lite-legacy";
        EXPECT_EQ(hp.n_layer, 3u);
        EXPECT_EQ(hp.n_moe_layer(), 2u);
        ASSERT_TRUE(hp.mla.enabled());
        EXPECT_EQ(hp.mla.absorbed, !legacy);
        EXPECT_EQ(hp.mla.kv_lora_rank, 128);
        EXPECT_EQ(hp.mla.q_lora_rank, v3 ? 128 : 0);
        EXPECT_EQ(hp.mla.qk_nope_dim, 32);
        EXPECT_EQ(hp.mla.v_head_dim, 64);
        if (legacy) {
            // Decompressed: every head its own key (non-rotary + rotary) and value.
            EXPECT_EQ(hp.n_head_kv, hp.n_head);
            EXPECT_EQ(hp.head_dim, 32 + 32);
            EXPECT_EQ(hp.value_dim(), 64);
            EXPECT_EQ(kv_shape_of(hp), (kv_cache_shape{3, 4 * 64, 4 * 64}));
            EXPECT_EQ(m->layer(1).wkv_b.rows, 4 * (32 + 64));
            EXPECT_EQ(m->layer(1).wkv_b.cols, 128);
        } else {
            EXPECT_EQ(hp.n_head_kv, 1);
            EXPECT_EQ(hp.head_dim, 128 + 32);  // the absorbed head: latent + rotary
            EXPECT_EQ(hp.value_dim(), 128);
            EXPECT_EQ(m->layer(1).wk_b.rows, 128);
            EXPECT_EQ(m->layer(1).wk_b.cols, 32);
            EXPECT_EQ(m->layer(1).wv_b.rows, 64);
        }
        EXPECT_EQ(hp.rope, rope_kind::norm);
        EXPECT_EQ(hp.routing.gating, v3 ? gating_kind::sigmoid : gating_kind::softmax);
        EXPECT_EQ(hp.routing.normalize, v3);
        EXPECT_EQ(hp.routing.selection_bias, v3);
        EXPECT_FLOAT_EQ(hp.routing.scale, v3 ? 2.5f : 1.0f);
        EXPECT_EQ(hp.routing.n_group, v3 ? 4u : 0u);
        EXPECT_EQ(hp.routing.n_group_used, v3 ? 2u : 0u);
        // YaRN x40 with mscale = mscale_all_dim: RoPE's magnitude is 1 (its correction
        // cancelled), and the attention scale carries (1 + 0.1 mscale_all_dim ln 40)^2 over
        // the uncompressed head's sqrt(key size).
        ASSERT_TRUE(hp.rope_scale.has_value());
        EXPECT_NEAR(hp.rope_scale->attn_factor, 1.0 / (1.0 + 0.1 * std::log(40.0)), 1e-6);
        const double mscale_all = v3 ? 1.0 : 0.707;
        const double mscale = 1.0 + 0.1 * mscale_all * std::log(40.0);
        EXPECT_NEAR(hp.kq_scale, mscale * mscale / std::sqrt(64.0), 1e-5);
    }
}

class deepseek_glm_types : public ::testing::TestWithParam<std::tuple<variant, std::string>> {};

TEST_P(deepseek_glm_types, chunks_batches_and_threads_do_not_change_logits) {
    const auto& [v, type] = GetParam();
    auto m = load(v, type);
    ASSERT_TRUE(m);
    const std::int64_t n_vocab = m->hparams().n_vocab;
    const auto prompt = sample_tokens(37, n_vocab);
    std::vector<float> whole, chunked, single, three_threads;
    {
        kernels::compute_pool pool(2);
        evaluator eval(*m, pool, 64);
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, whole));
        evaluator eval5(*m, pool, 5);
        auto cache5 = make_cache(*m);
        ASSERT_TRUE(eval5.run_sequence(prompt, cache5, chunked));
        evaluator eval1(*m, pool, 1);
        auto cache1 = make_cache(*m);
        ASSERT_TRUE(eval1.run_sequence(prompt, cache1, single));
    }
    {
        kernels::compute_pool pool(3);
        evaluator eval(*m, pool, 16);
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, three_threads));
    }
    EXPECT_EQ(whole, chunked);
    EXPECT_EQ(whole, single);
    EXPECT_EQ(whole, three_threads);
    for (float x : whole) ASSERT_TRUE(std::isfinite(x));

    // Two sequences in one batch, interleaved, each as it runs alone.
    kernels::compute_pool pool(2);
    evaluator eval(*m, pool, 32);
    const auto a = sample_tokens(9, n_vocab, 1);
    const auto b = sample_tokens(14, n_vocab, 2);
    std::vector<float> alone_a, alone_b;
    auto ca = make_cache(*m), cb = make_cache(*m);
    ASSERT_TRUE(eval.run_sequence(a, ca, alone_a));
    ASSERT_TRUE(eval.run_sequence(b, cb, alone_b));
    auto ca2 = make_cache(*m), cb2 = make_cache(*m);
    std::vector<batch_token> batch;
    for (std::size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
        if (i < a.size()) batch.push_back({a[i], static_cast<std::int64_t>(i), &ca2, i + 1 == a.size()});
        if (i < b.size()) batch.push_back({b[i], static_cast<std::int64_t>(i), &cb2, i + 1 == b.size()});
    }
    std::vector<float> logits(2 * static_cast<std::size_t>(n_vocab));
    ASSERT_TRUE(eval.run(batch, logits.data()));
    EXPECT_EQ(alone_a, std::vector<float>(logits.begin(), logits.begin() + n_vocab));
    EXPECT_EQ(alone_b, std::vector<float>(logits.begin() + n_vocab, logits.end()));
}

// A 25% host budget evicts and re-reads experts all the time; the logits must not change.
TEST_P(deepseek_glm_types, tiered_experts_give_the_resident_logits) {
    const auto& [v, type] = GetParam();
    auto resident = load(v, type);
    load_options tiered_options;
    tiered_options.host_budget = budget_spec{0, 0.25, true};
    tiered_options.tier.lock = storage::memory_lock::off;
    auto tiered = load(v, type, tiered_options);
    ASSERT_TRUE(resident && tiered);
    ASSERT_NE(tiered->tiers(), nullptr);
    EXPECT_EQ(tiered->experts_layout().n_layer, tiered->hparams().n_moe_layer());
    const auto prompt = sample_tokens(23, resident->hparams().n_vocab);
    std::vector<std::vector<float>> out;
    for (model* m : {resident.get(), tiered.get()}) {
        kernels::compute_pool pool(2);
        evaluator eval(*m, pool, 8);
        auto cache = make_cache(*m);
        std::vector<float> logits;
        ASSERT_TRUE(eval.run_sequence(prompt, cache, logits));
        out.push_back(logits);
        for (int step = 0; step < 4; ++step) {
            const auto tok = static_cast<token_id>(std::max_element(logits.begin(), logits.end()) - logits.begin());
            ASSERT_TRUE(eval.run_sequence(std::span<const token_id>(&tok, 1), cache, logits));
            out.back().insert(out.back().end(), logits.begin(), logits.end());
        }
    }
    EXPECT_EQ(out[0], out[1]);
    const storage::expert_cache_stats st = tiered->tiers()->stats();
    EXPECT_GT(st.host.misses, 0u);
    // The layer clock runs over MoE layers: 3 prefill batches (8 + 8 + 7) and 4 decodes.
    EXPECT_EQ(st.prefetch.layers_computed, 7u * tiered->hparams().n_moe_layer());
}

INSTANTIATE_TEST_SUITE_P(variants, deepseek_glm_types,
                         ::testing::Combine(::testing::Values(glm_air, glm_qk_norm, ds_v2_lite, ds_v3, ds_legacy),
                                            ::testing::Values(std::string("F32"), std::string("Q8_0"),
                                                              std::string("Q4_K_M"))),
                         [](const auto& test_info) {
                             std::string name = std::string(std::get<0>(test_info.param).arch) + "_" +
                                                std::get<0>(test_info.param).name + "_" + std::get<1>(test_info.param);
                             std::replace(name.begin(), name.end(), '-', '_');
                             return name;
                         });

// An expert source that counts what the engine asks for, over the resident one.
class counting_source final : public storage::expert_source {
public:
    explicit counting_source(std::unique_ptr<storage::expert_source> inner) : inner_(std::move(inner)) {}
    result<storage::expert_handle> acquire(ExpertId id, device_id device) override {
        auto h = inner_->acquire(id, device);
        if (!h) return h;
        ++acquired[{id.layer, id.expert}];
        ++outstanding;
        return storage::expert_handle(this, id, h->weights(), 0, h->device(), h->memory());
    }
    std::map<std::pair<std::uint32_t, std::uint32_t>, int> acquired;
    int outstanding = 0;

protected:
    void release(ExpertId, std::uint64_t) noexcept override { --outstanding; }

private:
    std::unique_ptr<storage::expert_source> inner_;
};

TEST(deepseek_glm, routing_and_acquisitions_count_moe_layers) {
    for (const variant& v : {glm_qk_norm, ds_v2_lite, ds_v3, ds_legacy}) {
        SCOPED_TRACE(std::string(v.arch) + " " + v.name);
        auto m = load(v, "Q8_0");
        ASSERT_TRUE(m);
        const model_hparams& hp = m->hparams();
        auto resident = std::make_unique<storage::resident_expert_source>(
            m->file().path(), m->experts_layout(), m->weights_image(), m->file().data_offset());
        auto counting = std::make_unique<counting_source>(std::move(resident));
        counting_source* counter = counting.get();
        m->set_expert_source(std::move(counting));

        kernels::compute_pool pool(2);
        evaluator eval(*m, pool, 64);
        eval.set_lookahead_depth(2);
        std::vector<std::uint32_t> routed_layers, started_layers;
        const std::uint32_t n_exp = hp.n_expert;
        const int k = static_cast<int>(hp.n_expert_used);
        eval.add_layer_start_observer([&](const lookahead_event& ev) {
            started_layers.push_back(ev.layer);
            for (int j = 0; j < ev.depth; ++j) {
                for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
                    const float* row = ev.probs.data() + (j * ev.n_tokens + t) * n_exp;
                    double sum = 0.0;
                    for (std::uint32_t e = 0; e < n_exp; ++e) sum += row[e];
                    // A distribution for MoE layers that exist, zeros past the last.
                    EXPECT_NEAR(sum, ev.layer + j < hp.n_moe_layer() ? 1.0 : 0.0, 1e-5);
                }
            }
        });
        eval.add_routing_observer([&](const routing_event& ev) {
            routed_layers.push_back(ev.layer);
            for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
                const float* p = ev.probs.data() + t * n_exp;
                double sum = 0.0;
                for (std::uint32_t e = 0; e < n_exp; ++e) sum += p[e];
                EXPECT_NEAR(sum, 1.0, 1e-5);
                // The chosen experts lead the distribution.
                float least_chosen = INFINITY, best_other = -INFINITY;
                for (std::uint32_t e = 0; e < n_exp; ++e) {
                    const bool chosen = std::find(ev.chosen.begin() + t * k, ev.chosen.begin() + (t + 1) * k,
                                                  static_cast<std::int32_t>(e)) != ev.chosen.begin() + (t + 1) * k;
                    if (chosen) least_chosen = std::min(least_chosen, p[e]);
                    else best_other = std::max(best_other, p[e]);
                }
                EXPECT_GE(least_chosen, best_other);
            }
        });
        auto cache = make_cache(*m);
        std::vector<float> logits;
        ASSERT_TRUE(eval.run_sequence(sample_tokens(30, hp.n_vocab), cache, logits));
        EXPECT_EQ(routed_layers, (std::vector<std::uint32_t>{0, 1}));
        EXPECT_EQ(started_layers, (std::vector<std::uint32_t>{0, 1}));
        EXPECT_EQ(counter->outstanding, 0);
        ASSERT_FALSE(counter->acquired.empty());
        for (const auto& [key, count] : counter->acquired) {
            EXPECT_LT(key.first, hp.n_moe_layer());
            EXPECT_EQ(count, 1) << "expert " << key.first << "/" << key.second;
        }
    }
}

TEST(deepseek_glm, latent_cache_rows_and_shape_check) {
    auto m = load(ds_v3, "F32");
    ASSERT_TRUE(m);
    const kv_cache_shape shape = kv_shape_of(m->hparams());
    EXPECT_EQ(shape, (kv_cache_shape{3, 128 + 32, 0}));  // one latent + rotary row, no separate values
    kv_cache cache(shape, 50);
    EXPECT_EQ(cache.bytes(), 3u * 50 * 160 * 2);
    EXPECT_EQ(cache.values(1), cache.keys(1));
    EXPECT_EQ(kv_cache::bytes_for(shape, 50), cache.bytes());

    // A cache made the per-head way does not fit MLA.
    kernels::compute_pool pool(1);
    evaluator eval(*m, pool, 4);
    kv_cache wrong(m->hparams().n_layer, 50, m->hparams().n_head_kv, m->hparams().head_dim);
    std::vector<float> logits;
    auto r = eval.run_sequence(sample_tokens(3, m->hparams().n_vocab), wrong, logits);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::invalid_argument);
    EXPECT_NE(r.error().message.find("KV cache"), std::string::npos) << r.error().message;
}

TEST(deepseek_glm, prediction_block_is_not_loaded) {
    const std::string path = model_path(glm_qk_norm, "Q8_0");
    load_options tiered_options;
    tiered_options.host_budget = budget_spec{0, 0.25, true};
    tiered_options.tier.lock = storage::memory_lock::off;
    auto m = load(glm_qk_norm, "Q8_0", tiered_options);
    ASSERT_TRUE(m);
    auto file = storage::gguf_file::open(path);
    ASSERT_TRUE(file);
    std::uint64_t served = 0, prediction = 0;
    for (const auto& t : (*file)->tensors()) {
        if (t.name.starts_with("blk.3.")) {
            prediction += t.size_bytes;
        } else if (t.name.find("_exps.weight") == std::string::npos) {
            served += t.size_bytes;
        }
    }
    ASSERT_GT(prediction, 0u);
    EXPECT_EQ(m->dense_bytes(), served);
    EXPECT_LT(m->weights_image().size(), served + prediction);
}

// Broken variants of valid files, one change each.
void set_kv(test::gguf_contents& c, const std::string& key, storage::gguf_value v) {
    for (auto& [k, value] : c.kv) {
        if (k == key) {
            value = std::move(v);
            return;
        }
    }
    c.kv.emplace_back(key, std::move(v));
}

storage::gguf_value u32_value(std::uint64_t x) {
    storage::gguf_value v;
    v.type = storage::gguf_value_type::u32;
    v.data = x;
    return v;
}

struct broken_case {
    const char* name;
    variant source;
    std::function<void(test::gguf_contents&)> edit;
    errc code;
    std::vector<std::string> mentions;
};

TEST(deepseek_glm, bad_keys_and_tensors_are_clear_errors) {
    auto erase_tensor = [](const char* name) {
        return [name](test::gguf_contents& c) { std::erase_if(c.tensors, [&](const auto& t) { return t.name == name; }); };
    };
    const std::vector<broken_case> cases = {
        {"groups-not-dividing", ds_v3, [](auto& c) { set_kv(c, "deepseek2.expert_group_count", u32_value(3)); },
         errc::bad_file, {"expert_group_count", "8 experts"}},
        {"groups-all-used", ds_v3, [](auto& c) { set_kv(c, "deepseek2.expert_group_used_count", u32_value(4)); },
         errc::bad_file, {"expert_group_used_count"}},
        {"groups-too-small", ds_v3,
         [](auto& c) {
             set_kv(c, "deepseek2.expert_group_used_count", u32_value(1));
             set_kv(c, "deepseek2.expert_used_count", u32_value(3));
         },
         errc::bad_file, {"cannot hold", "3 experts"}},
        {"no-moe-layer", glm_air, [](auto& c) { set_kv(c, "glm4moe.leading_dense_block_count", u32_value(3)); },
         errc::bad_file, {"glm4moe.leading_dense_block_count"}},
        {"all-prediction", glm_qk_norm, [](auto& c) { set_kv(c, "glm4moe.nextn_predict_layers", u32_value(4)); },
         errc::bad_file, {"glm4moe.nextn_predict_layers"}},
        {"gating-3", ds_v2_lite, [](auto& c) { set_kv(c, "deepseek2.expert_gating_func", u32_value(3)); },
         errc::unsupported, {"deepseek2.expert_gating_func", "sigmoid"}},
        // Without key_length_mla the keys are read as the decompressed form's, which a file
        // with one KV head cannot be.
        {"absorbed-keys-missing", ds_v2_lite,
         [](auto& c) { std::erase_if(c.kv, [](const auto& kv) { return kv.first == "deepseek2.attention.key_length_mla"; }); },
         errc::bad_file, {"key_length_mla", "head_count_kv"}},
        {"decompressed-tensor-absorbed-keys", ds_v2_lite,
         [](auto& c) {
             for (auto& t : c.tensors) {
                 if (t.name == "blk.1.attn_k_b.weight") t.name = "blk.1.attn_kv_b.weight";
             }
         },
         errc::bad_file, {"blk.1.attn_kv_b.weight", "attn_k_b"}},
        {"decompressed-without-kv-b", ds_legacy, erase_tensor("blk.2.attn_kv_b.weight"), errc::not_found,
         {"blk.2.attn_kv_b.weight"}},
        {"mla-key-length", ds_v3, [](auto& c) { set_kv(c, "deepseek2.attention.key_length", u32_value(100)); },
         errc::bad_file, {"kv_lora_rank"}},
        {"missing-selection-bias", ds_v3, erase_tensor("blk.2.exp_probs_b.bias"), errc::not_found,
         {"blk.2.exp_probs_b.bias"}},
        {"missing-dense-ffn", glm_air, erase_tensor("blk.0.ffn_up.weight"), errc::not_found, {"blk.0.ffn_up.weight"}},
        {"missing-latent-norm", ds_v2_lite, erase_tensor("blk.2.attn_kv_a_norm.weight"), errc::not_found,
         {"blk.2.attn_kv_a_norm.weight"}},
    };
    for (const auto& bc : cases) {
        SCOPED_TRACE(bc.name);
        const std::string dst = (test::temp_dir() / (std::string("broken-") + bc.name + ".gguf")).string();
        test::rewrite_gguf(model_path(bc.source, "F32"), dst, bc.edit);
        auto m = model::load(dst);
        ASSERT_FALSE(m) << bc.name << " loaded";
        EXPECT_EQ(m.error().code, bc.code) << m.error().message;
        EXPECT_NE(m.error().message.find(dst), std::string::npos) << m.error().message;
        for (const auto& word : bc.mentions) {
            EXPECT_NE(m.error().message.find(word), std::string::npos) << "'" << word << "' not in: " << m.error().message;
        }
    }
}

}  // namespace
}  // namespace moed::engine
