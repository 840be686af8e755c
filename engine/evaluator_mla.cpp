// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2) as llama.cpp runs it
// (src/models/deepseek2.cpp): per token, the query (directly, or through the q-LoRA
// bottleneck and its norm) splits per head into a non-rotary part and a rotary part; the
// compressed KV projection splits into the latent (normalised) and one rotary key part
// shared by all heads; NORM RoPE turns the rotary parts.
// Absorbed (files with attn_k_b / attn_v_b): each head's non-rotary query is multiplied into
// latent space by its attn_k_b, so the query [latent | rotary] meets the cached rows
// [latent | rotary] of every position: multi-query attention with one KV head of
// kv_lora_rank + n_rot values, whose values are the latents; each head's output latent goes
// through its attn_v_b.
// Decompressed (older files with attn_kv_b): attn_kv_b turns the latent into every head's
// non-rotary key and value; the cache holds per-head keys [non-rotary | shared rotary] and
// values, and attention is multi-head.
// Either way all heads then go through attn_output.
// llama.cpp multiplies all of these, per-head stacks included, in plain (batched) products and
// attends with its plain KQ / KQV products, so each takes the tokens' sum orders (sum_order.h)
// as the other architectures' attention does.
#include <algorithm>

#include "engine/evaluator.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quantize.h"

namespace moed::engine {

namespace {
// Heads attended per work item in the absorbed form: the AVX-512 kernel does eight heads
// over one pass of the shared rows, and splitting a token's heads lets a single decoded
// token use the pool.
constexpr int k_heads_per_item = 8;
}  // namespace

void evaluator::mla_attention_block(std::uint32_t l, std::span<const batch_token> batch) {
    const model_hparams& hp = model_.hparams();
    const mla_config& mla = hp.mla;
    const layer_weights& lw = model_.layer(l);
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const std::int64_t embd = hp.n_embd;
    const int n_head = hp.n_head;
    const int rank = mla.kv_lora_rank;
    const int n_rot = hp.n_rot;
    const int nope = mla.qk_nope_dim;
    const std::int64_t q_head = nope + n_rot;
    const std::int64_t q_dim = q_head * n_head;
    const std::int64_t kv_a_dim = rank + n_rot;
    const kernels::rope_scaling* scaling = hp.rope_scale ? &*hp.rope_scale : nullptr;
    const kernels::sum_order* orders = orders_.data();

    for_tokens(n, [&](std::int64_t t) {
        kernels::rms_norm(x_.data() + t * embd, lw.attn_norm, cur_.data() + t * embd, embd, hp.rms_eps);
    });
    // The compressed KV [latent | rotary] into k_, then the query into mla_q_; they read the
    // same activations, converted once when their activation types agree.
    act_.quantize(lw.wkv_a.type, cur_.data(), n, embd, embd, &pool_);
    kernels::matmul(lw.wkv_a, act_, k_.data(), kv_a_dim, pool_, orders);
    const kernels::matrix_view& first_q = mla.q_lora_rank > 0 ? lw.wq_a : lw.wq;
    if (kernels::activation_type_for(first_q.type) != act_.type()) {
        act_.quantize(first_q.type, cur_.data(), n, embd, embd, &pool_);
    }
    if (mla.q_lora_rank > 0) {
        const std::int64_t q_rank = mla.q_lora_rank;
        kernels::matmul(lw.wq_a, act_, mla_q_a_.data(), q_rank, pool_, orders);
        for_tokens(n, [&](std::int64_t t) {
            float* qa = mla_q_a_.data() + t * q_rank;
            kernels::rms_norm(qa, lw.q_a_norm, qa, q_rank, hp.rms_eps);
        });
        kernels::matmul(lw.wq_b, mla_q_a_.data(), n, mla_q_.data(), q_dim, pool_, act_, orders);
    } else {
        kernels::matmul(lw.wq, act_, mla_q_.data(), q_dim, pool_, orders);
    }
    // RoPE on the rotary parts and the latent's norm.
    for_tokens(n, [&](std::int64_t t) {
        float* q = mla_q_.data() + t * q_dim;
        float* kv = k_.data() + t * kv_a_dim;
        kernels::rope_norm(q + nope, n_head, static_cast<int>(q_head), n_rot, batch[t].pos, hp.rope_freq_base, scaling);
        kernels::rope_norm(kv + rank, 1, n_rot, n_rot, batch[t].pos, hp.rope_freq_base, scaling);
        kernels::rms_norm(kv, lw.kv_a_norm, kv, rank, hp.rms_eps);
    });

    if (mla.absorbed) {
        mla_absorbed_attention(l, batch);
    } else {
        mla_decompressed_attention(l, batch);
    }

    kernels::matmul(lw.wo, mla_out_.data(), n, proj_.data(), embd, pool_, act_, orders);
    for_tokens(n, [&](std::int64_t t) {
        float* x = x_.data() + t * embd;
        const float* o = proj_.data() + t * embd;
        for (std::int64_t i = 0; i < embd; ++i) x[i] = o[i] + x[i];
    });
}

void evaluator::mla_absorbed_attention(std::uint32_t l, std::span<const batch_token> batch) {
    const model_hparams& hp = model_.hparams();
    const mla_config& mla = hp.mla;
    const layer_weights& lw = model_.layer(l);
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const int n_head = hp.n_head;
    const int rank = mla.kv_lora_rank;
    const int n_rot = hp.n_rot;
    const int nope = mla.qk_nope_dim;
    const std::int64_t q_head = nope + n_rot;
    const std::int64_t q_dim = q_head * n_head;
    const std::int64_t row = rank + n_rot;            // one cached position, one absorbed query head
    const std::int64_t absorbed_dim = row * n_head;   // q_ per token
    const std::int64_t latent_dim = static_cast<std::int64_t>(rank) * n_head;  // attn_ per token
    const std::int64_t v_dim = static_cast<std::int64_t>(mla.v_head_dim) * n_head;

    // The cache row is k_'s [latent | rotary] as it is.
    for_tokens(n, [&](std::int64_t t) {
        kv_cache& cache = *batch[t].cache;
        kernels::fp32_to_fp16_row(k_.data() + t * row, cache.keys(l) + batch[t].pos * cache.key_row_elems(), row);
    });
    // The absorbed queries: head h's non-rotary part through its attn_k_b into q_'s latent
    // part, its rotary part copied after it.
    for (int h = 0; h < n_head; ++h) {
        act_.quantize(lw.wk_b.type, mla_q_.data() + h * q_head, n, nope, q_dim, &pool_);
        kernels::matmul(head_matrix(lw.wk_b, h), act_, q_.data() + h * row, absorbed_dim, pool_, orders_.data());
    }
    for_tokens(n, [&](std::int64_t t) {
        for (int h = 0; h < n_head; ++h) {
            std::copy_n(mla_q_.data() + t * q_dim + h * q_head + nope, n_rot, q_.data() + t * absorbed_dim + h * row + rank);
        }
    });

    // Multi-query attention over the cached rows; the values are each row's latent.
    const int chunk = n_head % k_heads_per_item == 0 ? k_heads_per_item : n_head;
    const int chunks = n_head / chunk;
    auto attend = [&](std::int64_t begin, std::int64_t end, int thread) {
        float* scratch = attn_scratch_.data() + static_cast<std::size_t>(thread) * scratch_ctx_ * n_head;
        for (std::int64_t i = begin; i < end; ++i) {
            const std::int64_t t = i / chunks;
            const int h0 = static_cast<int>(i % chunks) * chunk;
            kv_cache& cache = *batch[t].cache;
            kernels::attention_args args;
            args.q = q_.data() + t * absorbed_dim + h0 * row;
            args.k_cache = cache.keys(l);
            args.v_cache = cache.keys(l);
            args.n_kv = batch[t].pos + 1;
            args.n_head = chunk;
            args.n_head_kv = 1;
            args.head_dim = static_cast<int>(row);
            args.v_dim = rank;
            args.k_stride = row;
            args.v_stride = row;
            args.scale = hp.kq_scale;
            args.order = batch[t].order;
            args.out = attn_.data() + t * latent_dim + static_cast<std::int64_t>(h0) * rank;
            kernels::attention_group(args, 0, scratch);
        }
    };
    pool_.parallel_for(n * chunks, 1, attend);

    // Each head's latent out through its attn_v_b.
    for (int h = 0; h < n_head; ++h) {
        act_.quantize(lw.wv_b.type, attn_.data() + static_cast<std::int64_t>(h) * rank, n, rank, latent_dim, &pool_);
        kernels::matmul(head_matrix(lw.wv_b, h), act_, mla_out_.data() + static_cast<std::int64_t>(h) * mla.v_head_dim,
                        v_dim, pool_, orders_.data());
    }
}

void evaluator::mla_decompressed_attention(std::uint32_t l, std::span<const batch_token> batch) {
    const model_hparams& hp = model_.hparams();
    const mla_config& mla = hp.mla;
    const layer_weights& lw = model_.layer(l);
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const int n_head = hp.n_head;
    const int rank = mla.kv_lora_rank;
    const int n_rot = hp.n_rot;
    const int nope = mla.qk_nope_dim;
    const int v_head = mla.v_head_dim;
    const std::int64_t k_head = nope + n_rot;
    const std::int64_t q_dim = k_head * n_head;
    const std::int64_t kv_a_dim = rank + n_rot;
    const std::int64_t kv_b_head = nope + v_head;
    const std::int64_t kv_b_dim = kv_b_head * n_head;

    // Every head's [non-rotary key | value] from the normalised latent.
    act_.quantize(lw.wkv_b.type, k_.data(), n, rank, kv_a_dim, &pool_);
    kernels::matmul(lw.wkv_b, act_, mla_kv_.data(), kv_b_dim, pool_, orders_.data());
    // The cache rows: per head, the key [non-rotary | shared rotary] and the value.
    for_tokens(n, [&](std::int64_t t) {
        kv_cache& cache = *batch[t].cache;
        std::uint16_t* krow = cache.keys(l) + batch[t].pos * cache.key_row_elems();
        std::uint16_t* vrow = cache.values(l) + batch[t].pos * cache.value_row_elems();
        const float* kv = mla_kv_.data() + t * kv_b_dim;
        const float* rot = k_.data() + t * kv_a_dim + rank;
        for (int h = 0; h < n_head; ++h) {
            kernels::fp32_to_fp16_row(kv + h * kv_b_head, krow + h * k_head, nope);
            kernels::fp32_to_fp16_row(rot, krow + h * k_head + nope, n_rot);
            kernels::fp32_to_fp16_row(kv + h * kv_b_head + nope, vrow + static_cast<std::int64_t>(h) * v_head, v_head);
        }
    });
    // Multi-head attention, one head per work item.
    auto attend = [&](std::int64_t begin, std::int64_t end, int thread) {
        float* scratch = attn_scratch_.data() + static_cast<std::size_t>(thread) * scratch_ctx_;
        for (std::int64_t i = begin; i < end; ++i) {
            const std::int64_t t = i / n_head;
            const int h = static_cast<int>(i % n_head);
            kv_cache& cache = *batch[t].cache;
            kernels::attention_args args;
            args.q = mla_q_.data() + t * q_dim;
            args.k_cache = cache.keys(l);
            args.v_cache = cache.values(l);
            args.n_kv = batch[t].pos + 1;
            args.n_head = n_head;
            args.n_head_kv = n_head;
            args.head_dim = static_cast<int>(k_head);
            args.v_dim = v_head;
            args.scale = hp.kq_scale;
            args.order = batch[t].order;
            args.out = mla_out_.data() + t * static_cast<std::int64_t>(v_head) * n_head;
            kernels::attention_group(args, h, scratch);
        }
    };
    pool_.parallel_for(n * n_head, 1, attend);
}

}  // namespace moed::engine
