#include "engine/evaluator.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "engine/routing.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quantize.h"

namespace moed::engine {

namespace {
// Element-wise work (norms, RoPE, residual adds) runs on the calling thread unless the batch
// has at least this many values: waking the pool costs a few microseconds, more than
// normalising a few thousand floats.
constexpr std::int64_t k_parallel_values_min = 16384;
// A group of experts is spread over the pool one expert per thread (each expert's kernels
// inline on its thread) when it has at least this many experts per thread; otherwise each
// expert's matmuls are split by rows over the whole pool. Whole experts per thread need one
// pool wake-up per group instead of about five per expert, which is what lets a decode batch
// of many sequences (many experts with a few rows each) pay; the results are the same bits
// either way, because every kernel is batch- and thread-invariant.
constexpr std::size_t k_experts_per_thread_min = 2;

// x += b, as ggml_add.
void add_bias(float* x, const float* b, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] + b[i];
}
}  // namespace

evaluator::evaluator(model& m, kernels::compute_pool& pool, std::int64_t max_batch)
    : model_(m), pool_(pool), max_batch_(max_batch) {
    MOED_ASSERT(max_batch > 0);
    const model_hparams& hp = m.hparams();
    const std::size_t b = static_cast<std::size_t>(max_batch);
    const std::size_t embd = static_cast<std::size_t>(hp.n_embd);
    const std::size_t q_dim = static_cast<std::size_t>(hp.n_head) * hp.head_dim;
    const std::size_t kv_dim = static_cast<std::size_t>(hp.n_head_kv) * hp.head_dim;
    const std::size_t ff = static_cast<std::size_t>(hp.n_ff_exp);
    x_.resize(b * embd);
    cur_.resize(b * embd);
    q_.resize(b * q_dim);
    k_.resize(b * kv_dim);
    v_.resize(b * kv_dim);
    attn_.resize(b * q_dim);
    proj_.resize(b * embd);
    router_probs_.resize(b * hp.n_expert);
    route_scratch_stride_ = routing_scratch_floats(hp.routing, hp.n_expert);
    route_scratch_.resize(b * route_scratch_stride_);
    route_weights_.resize(b * hp.n_expert_used);
    route_experts_.resize(b * hp.n_expert_used);
    lookahead_.resize(static_cast<std::size_t>(max_lookahead_depth) * b * hp.n_expert);
    expert_out_.resize(b * hp.n_expert_used * embd);
    // The shared expert and the leading dense layers' feed-forward block share scratch.
    if (const auto ffn = static_cast<std::size_t>(std::max(hp.shared_expert.n_ff, hp.n_layer_dense_lead > 0 ? hp.n_ff : 0));
        ffn > 0) {
        shared_gate_.resize(b * ffn);
        shared_up_.resize(b * ffn);
        shared_out_.resize(b * embd);
        shared_scale_.resize(b);
    }
    if (const mla_config& mla = hp.mla; mla.enabled()) {
        mla_q_.resize(b * static_cast<std::size_t>(hp.n_head) * (mla.qk_nope_dim + hp.n_rot));
        mla_q_a_.resize(b * static_cast<std::size_t>(mla.q_lora_rank));
        mla_out_.resize(b * static_cast<std::size_t>(hp.n_head) * mla.v_head_dim);
        if (!mla.absorbed) mla_kv_.resize(b * static_cast<std::size_t>(hp.n_head) * (mla.qk_nope_dim + mla.v_head_dim));
    }
    for (int i = 0; i < pool.size(); ++i) expert_scratch_.push_back(std::make_unique<expert_scratch>(b, embd, ff));
    group_order_.reserve(hp.n_expert);
    expert_count_.resize(hp.n_expert);
    expert_rows_.resize(static_cast<std::size_t>(hp.n_expert) * b);
    needed_.reserve(hp.n_expert);
    handles_.reserve(hp.n_expert);
    out_rows_.resize(b * embd);
    orders_.resize(b);
}

evaluator::expert_scratch::expert_scratch(std::size_t max_batch, std::size_t embd, std::size_t ff)
    : gathered(max_batch * embd), gate(max_batch * ff), up(max_batch * ff), down(max_batch * embd) {}

std::uint64_t evaluator::scratch_bytes() const noexcept {
    auto of = [](const auto& v) {
        return static_cast<std::uint64_t>(v.capacity()) * sizeof(typename std::decay_t<decltype(v)>::value_type);
    };
    std::uint64_t total = of(x_) + of(cur_) + of(q_) + of(k_) + of(v_) + of(attn_) + of(proj_) + of(router_probs_) +
                          of(route_weights_) + of(route_scratch_) + of(lookahead_) + of(route_experts_) +
                          of(mla_q_) + of(mla_q_a_) + of(mla_out_) + of(mla_kv_) +
                          of(expert_out_) + of(shared_gate_) + of(shared_up_) + of(shared_out_) +
                          of(shared_scale_) + of(group_order_) + of(expert_count_) + of(expert_rows_) + of(needed_) +
                          of(handles_) + of(attn_scratch_) + of(out_rows_) + of(orders_) + act_.capacity_bytes();
    for (const auto& e : expert_scratch_) {
        total += of(e->gathered) + of(e->gate) + of(e->up) + of(e->down) + e->act.capacity_bytes();
    }
    return total;
}

void evaluator::add_routing_observer(routing_observer observer) {
    if (observer) observers_.push_back(std::move(observer));
}

void evaluator::set_routing_observer(routing_observer observer) {
    observers_.clear();
    add_routing_observer(std::move(observer));
}

void evaluator::add_layer_start_observer(layer_start_observer observer) {
    if (observer) layer_start_observers_.push_back(std::move(observer));
}

void evaluator::clear_observers() noexcept {
    observers_.clear();
    layer_start_observers_.clear();
}

void evaluator::set_lookahead_depth(int depth) {
    MOED_ASSERT(depth >= 0 && depth <= max_lookahead_depth);
    lookahead_depth_ = depth;
}

void evaluator::for_tokens(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
    if (n * model_.hparams().n_embd < k_parallel_values_min || pool_.size() == 1) {
        for (std::int64_t t = 0; t < n; ++t) fn(t);
        return;
    }
    pool_.parallel_for(n, 1, [&](std::int64_t begin, std::int64_t end, int) {
        for (std::int64_t t = begin; t < end; ++t) fn(t);
    });
}

result<void> evaluator::validate(std::span<const batch_token> batch) const {
    if (batch.empty()) return make_error(errc::invalid_argument, "empty batch");
    if (static_cast<std::int64_t>(batch.size()) > max_batch_) {
        return make_error(errc::invalid_argument, "batch of {} tokens exceeds the maximum {}",
                          batch.size(), max_batch_);
    }
    const std::int64_t n_vocab = model_.hparams().n_vocab;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        const batch_token& bt = batch[i];
        if (bt.cache == nullptr) return make_error(errc::invalid_argument, "batch token {} has no KV cache", i);
        if (bt.token < 0 || bt.token >= n_vocab) {
            return make_error(errc::invalid_argument, "batch token {}: id {} is outside the vocabulary (0..{})",
                              i, bt.token, n_vocab - 1);
        }
        if (!(bt.cache->shape() == kv_shape_of(model_.hparams()))) {
            return make_error(errc::invalid_argument,
                              "batch token {}: the KV cache ({} layers, rows of {} + {}) is not this model's shape", i,
                              bt.cache->shape().n_layer, bt.cache->shape().k_row_elems, bt.cache->shape().v_row_elems);
        }
        if (bt.pos < 0 || bt.pos >= bt.cache->n_ctx()) {
            return make_error(errc::invalid_argument,
                              "batch token {}: position {} is outside the context (0..{})", i, bt.pos,
                              bt.cache->n_ctx() - 1);
        }
        if (bt.allowed_experts != nullptr) {
            const model_hparams& hp = model_.hparams();
            for (std::uint32_t l = 0; l < hp.n_moe_layer(); ++l) {
                const std::uint8_t* allow = bt.allowed_experts + static_cast<std::size_t>(l) * hp.n_expert;
                const auto n_allowed = static_cast<std::uint32_t>(std::count_if(allow, allow + hp.n_expert,
                                                                                [](std::uint8_t a) { return a != 0; }));
                if (n_allowed < hp.n_expert_used) {
                    return make_error(errc::invalid_argument,
                                      "batch token {}: layer {} allows {} experts, fewer than the {} each token uses", i,
                                      l, n_allowed, hp.n_expert_used);
                }
            }
        }
    }
    return {};
}

result<void> evaluator::run(std::span<const batch_token> batch, float* logits) {
    MOED_TRY(validate(batch));
    const model_hparams& hp = model_.hparams();
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const std::int64_t embd = hp.n_embd;

    // Per-thread attention scratch must hold the longest context in this batch.
    std::int64_t ctx_needed = 0;
    for (const batch_token& bt : batch) ctx_needed = std::max(ctx_needed, bt.pos + 1);
    if (ctx_needed > scratch_ctx_) {
        // Each thread scores one KV head's group of query heads at a time.
        const std::size_t group = static_cast<std::size_t>(hp.n_head / hp.n_head_kv);
        scratch_ctx_ = std::max(ctx_needed, batch.front().cache->n_ctx());
        attn_scratch_.assign(static_cast<std::size_t>(scratch_ctx_) * group * pool_.size(), 0.0f);
    }

    for (std::int64_t t = 0; t < n; ++t) orders_[static_cast<std::size_t>(t)] = batch[t].order;

    const kernels::matrix_view& embd_w = model_.token_embedding();
    for_tokens(n, [&](std::int64_t t) {
        const auto* row = static_cast<const std::byte*>(embd_w.data) +
                          static_cast<std::size_t>(batch[t].token) * embd_w.row_stride_bytes;
        kernels::dequantize_row(embd_w.type, row, x_.data() + t * embd, embd);
    });

    // The tiers follow the layer clock from here (none when every expert is resident): a
    // layer's begin drops what was queued for layers passed and counts the tokens, its end
    // times the compute a prefetch has to hide behind.
    storage::tier_control* tiers = model_.experts().control();
    // The leading dense layers have no experts: the layer clock, the lookahead and the
    // routing events count MoE layers only.
    for (std::uint32_t l = 0; l < hp.n_layer; ++l) {
        const bool moe = hp.is_moe_layer(l);
        const std::uint32_t m = l - hp.n_layer_dense_lead;
        if (moe && tiers != nullptr) tiers->begin_layer(m, static_cast<std::uint64_t>(n));
        if (moe) layer_start(m, batch);
        if (hp.mla.enabled()) {
            mla_attention_block(l, batch);
        } else {
            attention_block(l, batch);
        }
        if (moe) {
            MOED_TRY(moe_block(l, batch));
        } else {
            dense_block(l, n);
        }
        if (moe && tiers != nullptr) tiers->end_layer(m);
    }
    for (const batch_token& bt : batch) bt.cache->set_size(std::max(bt.cache->size(), bt.pos + 1));

    // Output head for the tokens that want logits.
    std::int64_t n_out = 0;
    for (std::int64_t t = 0; t < n; ++t) {
        if (!batch[t].want_logits) continue;
        kernels::rms_norm(x_.data() + t * embd, model_.output_norm(), out_rows_.data() + n_out * embd, embd,
                          hp.rms_eps);
        ++n_out;
    }
    if (n_out > 0) {
        kernels::matmul(model_.output(), out_rows_.data(), n_out, logits, hp.n_vocab, pool_, act_);
    }
    return {};
}

const kernels::sum_order* evaluator::router_orders(std::uint32_t l) const noexcept {
    // llama.cpp's last layer keeps, after attention, only the rows that want logits (one
    // per sequence), so its router and shared expert multiply a token alone; moed's other
    // rows of that layer feed nothing.
    return l + 1 == model_.hparams().n_layer ? nullptr : orders_.data();
}

void evaluator::layer_start(std::uint32_t m, std::span<const batch_token> batch) {
    const model_hparams& hp = model_.hparams();
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const std::int64_t embd = hp.n_embd;
    const std::int64_t n_exp = hp.n_expert;
    const int depth = lookahead_depth_;
    const std::size_t rows = static_cast<std::size_t>(depth) * n * n_exp;
    // Row j predicts MoE layer m + j from the stream entering MoE layer m, with the same
    // kernels the real router uses (so at j = 0 it is exactly what layer m's router would
    // say without attention in between). x_ is only read: the logits are unchanged.
    for (int j = 0; j < depth; ++j) {
        float* out = lookahead_.data() + static_cast<std::size_t>(j) * n * n_exp;
        const std::uint32_t target = m + static_cast<std::uint32_t>(j);
        if (target >= hp.n_moe_layer()) {
            std::fill_n(out, n * n_exp, 0.0f);
            continue;
        }
        const layer_weights& tw = model_.layer(target + hp.n_layer_dense_lead);
        for_tokens(n, [&](std::int64_t t) {
            kernels::rms_norm(x_.data() + t * embd, tw.ffn_norm, cur_.data() + t * embd, embd, hp.rms_eps);
        });
        kernels::matmul(tw.router, cur_.data(), n, out, n_exp, pool_, act_, router_orders(target + hp.n_layer_dense_lead));
        for_tokens(n, [&](std::int64_t t) {
            if (tw.router_bias != nullptr) add_bias(out + t * n_exp, tw.router_bias, n_exp);
            routing_distribution(hp.routing, out + t * n_exp, tw.selection_bias, static_cast<int>(n_exp),
                                 route_scratch_.data() + static_cast<std::size_t>(t) * route_scratch_stride_);
        });
    }
    if (layer_start_observers_.empty()) return;
    const lookahead_event ev{m, n, batch, depth, std::span<const float>(lookahead_.data(), rows),
                             std::span<const float>(x_.data(), static_cast<std::size_t>(n * embd))};
    for (const layer_start_observer& obs : layer_start_observers_) obs(ev);
}

void evaluator::attention_block(std::uint32_t l, std::span<const batch_token> batch) {
    const model_hparams& hp = model_.hparams();
    const layer_weights& lw = model_.layer(l);
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const std::int64_t embd = hp.n_embd;
    const int hd = hp.head_dim;
    const std::int64_t q_dim = static_cast<std::int64_t>(hp.n_head) * hd;
    const std::int64_t kv_dim = static_cast<std::int64_t>(hp.n_head_kv) * hd;

    for_tokens(n, [&](std::int64_t t) {
        kernels::rms_norm(x_.data() + t * embd, lw.attn_norm, cur_.data() + t * embd, embd, hp.rms_eps);
    });
    // Q, K and V read the same activations, converted once when their activation types agree
    // (one Q8_K conversion serves Q4_K and Q6_K weights).
    const kernels::sum_order* orders = orders_.data();
    act_.quantize(lw.wq.type, cur_.data(), n, embd, embd, &pool_);
    kernels::matmul(lw.wq, act_, q_.data(), q_dim, pool_, orders);
    if (kernels::activation_type_for(lw.wk.type) != act_.type()) act_.quantize(lw.wk.type, cur_.data(), n, embd, embd, &pool_);
    kernels::matmul(lw.wk, act_, k_.data(), kv_dim, pool_, orders);
    if (kernels::activation_type_for(lw.wv.type) != act_.type()) act_.quantize(lw.wv.type, cur_.data(), n, embd, embd, &pool_);
    kernels::matmul(lw.wv, act_, v_.data(), kv_dim, pool_, orders);

    for_tokens(n, [&](std::int64_t t) {
        float* q = q_.data() + t * q_dim;
        float* k = k_.data() + t * kv_dim;
        float* v = v_.data() + t * kv_dim;
        if (lw.bq != nullptr) add_bias(q, lw.bq, q_dim);
        if (lw.bk != nullptr) add_bias(k, lw.bk, kv_dim);
        if (lw.bv != nullptr) add_bias(v, lw.bv, kv_dim);
        switch (hp.qk_norm) {
            case qk_norm_kind::none: break;
            case qk_norm_kind::per_head:
                for (int h = 0; h < hp.n_head; ++h) kernels::rms_norm(q + h * hd, lw.q_norm, q + h * hd, hd, hp.rms_eps);
                for (int h = 0; h < hp.n_head_kv; ++h) kernels::rms_norm(k + h * hd, lw.k_norm, k + h * hd, hd, hp.rms_eps);
                break;
            case qk_norm_kind::whole:
                kernels::rms_norm(q, lw.q_norm, q, q_dim, hp.rms_eps);
                kernels::rms_norm(k, lw.k_norm, k, kv_dim, hp.rms_eps);
                break;
        }
        const kernels::rope_scaling* scaling = hp.rope_scale ? &*hp.rope_scale : nullptr;
        if (hp.rope == rope_kind::neox) {
            kernels::rope_neox(q, hp.n_head, hd, hp.n_rot, batch[t].pos, hp.rope_freq_base, scaling);
            kernels::rope_neox(k, hp.n_head_kv, hd, hp.n_rot, batch[t].pos, hp.rope_freq_base, scaling);
        } else {
            kernels::rope_norm(q, hp.n_head, hd, hp.n_rot, batch[t].pos, hp.rope_freq_base, scaling);
            kernels::rope_norm(k, hp.n_head_kv, hd, hp.n_rot, batch[t].pos, hp.rope_freq_base, scaling);
        }
        kv_cache& cache = *batch[t].cache;
        std::uint16_t* krow = cache.keys(l) + batch[t].pos * cache.key_row_elems();
        std::uint16_t* vrow = cache.values(l) + batch[t].pos * cache.value_row_elems();
        kernels::fp32_to_fp16_row(k, krow, kv_dim);
        kernels::fp32_to_fp16_row(v, vrow, kv_dim);
    });

    // Every token's K/V is in its cache now; each attends causally up to its own position.
    const float scale = hp.kq_scale != 0.0f ? hp.kq_scale : 1.0f / std::sqrt(static_cast<float>(hd));
    // One work item = one token's query heads that share a KV head (grouped-query attention
    // converts each K/V row once per group).
    const std::int64_t items = n * hp.n_head_kv;
    const bool swa = hp.is_swa_layer(l);
    const std::size_t group = static_cast<std::size_t>(hp.n_head / hp.n_head_kv);
    auto attend = [&](std::int64_t begin, std::int64_t end, int thread) {
        float* scratch = attn_scratch_.data() + static_cast<std::size_t>(thread) * scratch_ctx_ * group;
        for (std::int64_t i = begin; i < end; ++i) {
            const std::int64_t t = i / hp.n_head_kv;
            const int kv_head = static_cast<int>(i % hp.n_head_kv);
            kv_cache& cache = *batch[t].cache;
            kernels::attention_args args;
            args.q = q_.data() + t * q_dim;
            args.k_cache = cache.keys(l);
            args.v_cache = cache.values(l);
            args.n_kv = batch[t].pos + 1;
            args.n_head = hp.n_head;
            args.n_head_kv = hp.n_head_kv;
            args.head_dim = hd;
            args.scale = scale;
            args.out = attn_.data() + t * q_dim;
            args.order = batch[t].order;
            args.sinks = lw.sinks;
            if (swa) args.kv_start = std::max<std::int64_t>(0, batch[t].pos + 1 - hp.swa_window);
            kernels::attention_group(args, kv_head, scratch);
        }
    };
    pool_.parallel_for(items, 1, attend);

    kernels::matmul(lw.wo, attn_.data(), n, proj_.data(), embd, pool_, act_, orders);
    for_tokens(n, [&](std::int64_t t) {
        float* x = x_.data() + t * embd;
        float* o = proj_.data() + t * embd;
        if (lw.bo != nullptr) add_bias(o, lw.bo, embd);
        for (std::int64_t i = 0; i < embd; ++i) x[i] = o[i] + x[i];
    });
}

void evaluator::apply_expert(std::uint32_t e, const storage::expert_weights& w, kernels::compute_pool& pool,
                             expert_scratch& scratch) {
    const model_hparams& hp = model_.hparams();
    const std::int64_t embd = hp.n_embd;
    const std::int64_t ff = hp.n_ff_exp;
    const int k = static_cast<int>(hp.n_expert_used);
    const std::int64_t m = expert_count_[e];
    const std::int32_t* rows = expert_rows_.data() + static_cast<std::size_t>(e) * max_batch_;
    float* gathered = scratch.gathered.data();
    float* gate = scratch.gate.data();
    float* up = scratch.up.data();
    float* down = scratch.down.data();
    kernels::activation_buffer& act = scratch.act;
    for (std::int64_t r = 0; r < m; ++r) {
        const std::int64_t t = rows[r] / k;
        std::copy_n(cur_.data() + t * embd, embd, gathered + r * embd);
    }
    auto view = [](const storage::expert_matrix& em) {
        return kernels::matrix_view{em.type, em.data, em.rows, em.cols, em.row_bytes};
    };
    act.quantize(w.gate.type, gathered, m, embd, embd, &pool);
    kernels::matmul(view(w.gate), act, gate, ff, pool);
    if (kernels::activation_type_for(w.up.type) != act.type()) act.quantize(w.up.type, gathered, m, embd, embd, &pool);
    kernels::matmul(view(w.up), act, up, ff, pool);
    const layer_weights& lw = model_.layer(layer_of_experts_);
    if (lw.expert_gate_bias != nullptr) {
        const float* gb = lw.expert_gate_bias + static_cast<std::size_t>(e) * ff;
        const float* ub = lw.expert_up_bias + static_cast<std::size_t>(e) * ff;
        for (std::int64_t r = 0; r < m; ++r) {
            add_bias(gate + r * ff, gb, ff);
            add_bias(up + r * ff, ub, ff);
        }
    }
    if (hp.activation == expert_activation::swiglu_oai) {
        kernels::swiglu_oai(gate, up, gate, m * ff);
    } else {
        // One row at a time: SwiGLU ends a call as llama.cpp ends a row (ops.h).
        for (std::int64_t r = 0; r < m; ++r) kernels::swiglu(gate + r * ff, up + r * ff, gate + r * ff, ff);
    }
    kernels::matmul(view(w.down), gate, m, down, embd, pool, act);
    if (lw.expert_down_bias != nullptr) {
        const float* db = lw.expert_down_bias + static_cast<std::size_t>(e) * embd;
        for (std::int64_t r = 0; r < m; ++r) add_bias(down + r * embd, db, embd);
    }
    for (std::int64_t r = 0; r < m; ++r) {
        const std::int32_t ts = rows[r];
        const float weight = route_weights_[ts];
        const float* src = down + r * embd;
        float* dst = expert_out_.data() + static_cast<std::size_t>(ts) * embd;
        for (std::int64_t j = 0; j < embd; ++j) dst[j] = src[j] * weight;
    }
}

void evaluator::apply_group(std::size_t first, std::size_t count) {
    const std::size_t threads = static_cast<std::size_t>(pool_.size());
    if (threads == 1 || count < k_experts_per_thread_min * threads) {
        for (std::size_t i = 0; i < count; ++i) {
            apply_expert(needed_[first + i].expert, handles_[i].weights(), pool_, *expert_scratch_[0]);
        }
        return;
    }
    // Experts with the most rows first, handed out one at a time, so the threads finish
    // together even when a prefill routes many more rows to some experts than to others.
    group_order_.resize(count);
    for (std::size_t i = 0; i < count; ++i) group_order_[i] = static_cast<std::uint32_t>(i);
    std::stable_sort(group_order_.begin(), group_order_.end(), [&](std::uint32_t a, std::uint32_t b) {
        return expert_count_[needed_[first + a].expert] > expert_count_[needed_[first + b].expert];
    });
    pool_.parallel_for(static_cast<std::int64_t>(count), 1, [&](std::int64_t begin, std::int64_t end, int thread) {
        expert_scratch& scratch = *expert_scratch_[static_cast<std::size_t>(thread)];
        for (std::int64_t j = begin; j < end; ++j) {
            const std::uint32_t i = group_order_[static_cast<std::size_t>(j)];
            apply_expert(needed_[first + i].expert, handles_[i].weights(), scratch.serial, scratch);
        }
    });
}

result<void> evaluator::moe_block(std::uint32_t l, std::span<const batch_token> batch) {
    const model_hparams& hp = model_.hparams();
    const std::int64_t n = static_cast<std::int64_t>(batch.size());
    const layer_weights& lw = model_.layer(l);
    const std::int64_t embd = hp.n_embd;
    const int n_exp = static_cast<int>(hp.n_expert);
    const int k = static_cast<int>(hp.n_expert_used);

    for_tokens(n, [&](std::int64_t t) {
        kernels::rms_norm(x_.data() + t * embd, lw.ffn_norm, cur_.data() + t * embd, embd, hp.rms_eps);
    });
    kernels::matmul(lw.router, cur_.data(), n, router_probs_.data(), n_exp, pool_, act_, router_orders(l));
    const std::uint32_t m = l - hp.n_layer_dense_lead;  // the MoE layer
    for_tokens(n, [&](std::int64_t t) {
        float* scores = router_probs_.data() + t * n_exp;  // the logits until routed
        if (lw.router_bias != nullptr) add_bias(scores, lw.router_bias, n_exp);
        const std::uint8_t* allowed = batch[t].allowed_experts;
        if (allowed != nullptr) allowed += static_cast<std::size_t>(m) * n_exp;
        route_token(hp.routing, scores, lw.selection_bias, n_exp, k, allowed, route_experts_.data() + t * k,
                    route_weights_.data() + t * k,
                    route_scratch_.data() + static_cast<std::size_t>(t) * route_scratch_stride_);
    });
    if (!observers_.empty()) {
        const routing_event ev{m,
                               n,
                               std::span<const float>(router_probs_.data(), n * n_exp),
                               std::span<const std::int32_t>(route_experts_.data(), n * k),
                               std::span<const float>(route_weights_.data(), n * k),
                               batch,
                               lookahead_depth_,
                               std::span<const float>(lookahead_.data(),
                                                      static_cast<std::size_t>(lookahead_depth_) * n * n_exp)};
        for (const routing_observer& obs : observers_) obs(ev);
    }

    layer_of_experts_ = l;
    // Group the batch's (token, slot) pairs by expert so each expert is applied once.
    std::fill(expert_count_.begin(), expert_count_.end(), 0);
    needed_.clear();
    for (std::int64_t t = 0; t < n; ++t) {
        for (int s = 0; s < k; ++s) {
            const std::int32_t e = route_experts_[t * k + s];
            if (expert_count_[e] == 0) needed_.push_back(ExpertId{m, static_cast<std::uint32_t>(e)});
            expert_rows_[static_cast<std::size_t>(e) * max_batch_ + expert_count_[e]++] =
                static_cast<std::int32_t>(t * k + s);
        }
    }
    // Experts are acquired in groups the source can hold at once (all of them when the
    // experts are resident). A group of few experts (decode) runs each expert across the pool
    // as soon as it is resident, those already resident first while the reads of the others
    // are in flight; a large group (prefill) is acquired whole and spread one expert per
    // thread (apply_group). Each expert writes only its own (token, slot) rows, so the order
    // changes no result.
    storage::expert_source& source = model_.experts();
    // The CPU kernels compute on the host, so that is where the experts are wanted.
    const device_id device = device_id::host();
    const std::size_t group = std::max<std::uint32_t>(1, source.max_held_experts());
    const std::size_t threads = static_cast<std::size_t>(pool_.size());
    for (std::size_t first = 0; first < needed_.size(); first += group) {
        const std::size_t count = std::min(group, needed_.size() - first);
        const std::span<const ExpertId> ids(needed_.data() + first, count);
        if (threads == 1 || count < k_experts_per_thread_min * threads) {
            MOED_TRY(source.acquire_each(ids, device, handles_, [this, first](std::size_t i, const storage::expert_handle& h) {
                apply_expert(needed_[first + i].expert, h.weights(), pool_, *expert_scratch_[0]);
            }));
        } else {
            MOED_TRY(source.acquire_many(ids, device, handles_));
            apply_group(first, count);
            for (auto& h : handles_) h.release();
        }
        handles_.clear();
    }

    const bool has_shared = hp.shared_expert.n_ff > 0;
    if (has_shared) {
        feed_forward(l, lw.shared_gate, lw.shared_up, lw.shared_down, n);
        if (hp.shared_expert.gated) gate_shared_expert(l, n);
    }

    // Sum the weighted expert outputs in slot order, as llama.cpp adds them, then the shared
    // expert's output, then the residual.
    for_tokens(n, [&](std::int64_t t) {
        float* x = x_.data() + t * embd;
        const float* eo = expert_out_.data() + static_cast<std::size_t>(t) * k * embd;
        const float* so = has_shared ? shared_out_.data() + t * embd : nullptr;
        for (std::int64_t j = 0; j < embd; ++j) {
            float sum = eo[j];
            for (int s = 1; s < k; ++s) sum += eo[s * embd + j];
            if (so != nullptr) sum = sum + so[j];
            x[j] = sum + x[j];
        }
    });
    return {};
}

void evaluator::feed_forward(std::uint32_t l, const kernels::matrix_view& gate, const kernels::matrix_view& up,
                             const kernels::matrix_view& down, std::int64_t n) {
    const std::int64_t embd = model_.hparams().n_embd;
    const std::int64_t ff = gate.rows;
    // Plain matrix products in llama.cpp, so they sum in the tokens' orders as the router.
    const kernels::sum_order* orders = router_orders(l);
    act_.quantize(gate.type, cur_.data(), n, embd, embd, &pool_);
    kernels::matmul(gate, act_, shared_gate_.data(), ff, pool_, orders);
    if (kernels::activation_type_for(up.type) != act_.type()) act_.quantize(up.type, cur_.data(), n, embd, embd, &pool_);
    kernels::matmul(up, act_, shared_up_.data(), ff, pool_, orders);
    // Row by row: llama.cpp's activation treats each row's last ff % 8 values apart.
    for (std::int64_t t = 0; t < n; ++t) {
        kernels::swiglu(shared_gate_.data() + t * ff, shared_up_.data() + t * ff, shared_gate_.data() + t * ff, ff);
    }
    kernels::matmul(down, shared_gate_.data(), n, shared_out_.data(), embd, pool_, act_, orders);
}

void evaluator::gate_shared_expert(std::uint32_t l, std::int64_t n) {
    const layer_weights& lw = model_.layer(l);
    const std::int64_t embd = model_.hparams().n_embd;
    kernels::matmul(lw.shared_gate_inp, cur_.data(), n, shared_scale_.data(), 1, pool_, act_, router_orders(l));
    for_tokens(n, [&](std::int64_t t) {
        // sigmoid as llama.cpp writes it for this gate: silu(g) / g.
        const float g = shared_scale_[static_cast<std::size_t>(t)];
        const float scale = g / (1.0f + std::exp(-g)) / g;
        float* out = shared_out_.data() + t * embd;
        for (std::int64_t j = 0; j < embd; ++j) out[j] = out[j] * scale;
    });
}

void evaluator::dense_block(std::uint32_t l, std::int64_t n) {
    const model_hparams& hp = model_.hparams();
    const layer_weights& lw = model_.layer(l);
    const std::int64_t embd = hp.n_embd;
    for_tokens(n, [&](std::int64_t t) {
        kernels::rms_norm(x_.data() + t * embd, lw.ffn_norm, cur_.data() + t * embd, embd, hp.rms_eps);
    });
    feed_forward(l, lw.ffn_gate, lw.ffn_up, lw.ffn_down, n);
    for_tokens(n, [&](std::int64_t t) {
        float* x = x_.data() + t * embd;
        const float* o = shared_out_.data() + t * embd;
        for (std::int64_t j = 0; j < embd; ++j) x[j] = o[j] + x[j];
    });
}

result<void> evaluator::run_sequence(std::span<const token_id> tokens, kv_cache& cache,
                                     std::vector<float>& last_logits, std::uint64_t seq) {
    if (tokens.empty()) return make_error(errc::invalid_argument, "no tokens to evaluate");
    if (cache.size() + static_cast<std::int64_t>(tokens.size()) > cache.n_ctx()) {
        return make_error(errc::invalid_argument, "{} tokens at position {} exceed the context of {}",
                          tokens.size(), cache.size(), cache.n_ctx());
    }
    last_logits.resize(static_cast<std::size_t>(model_.hparams().n_vocab));
    std::vector<batch_token> batch;
    batch.reserve(static_cast<std::size_t>(max_batch_));
    std::size_t done = 0;
    while (done < tokens.size()) {
        const std::size_t count = std::min<std::size_t>(tokens.size() - done, static_cast<std::size_t>(max_batch_));
        batch.clear();
        const std::int64_t pos0 = cache.size();
        for (std::size_t i = 0; i < count; ++i) {
            batch_token bt{tokens[done + i], pos0 + static_cast<std::int64_t>(i), &cache, done + i + 1 == tokens.size(), seq};
            // A call with several tokens is a prompt (or a continuation of one): llama.cpp
            // evaluates them together. A single token is a decode step.
            bt.order = kernels::prompt_token_order(static_cast<std::int64_t>(done + i), static_cast<std::int64_t>(tokens.size()));
            batch.push_back(bt);
        }
        MOED_TRY(run(batch, last_logits.data()));
        done += count;
    }
    return {};
}

}  // namespace moed::engine
