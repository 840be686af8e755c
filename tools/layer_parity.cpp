// layer-parity: where moed's sums part from llama.cpp's, layer by layer and op by op.
//
//   layer-parity -m MODEL.gguf --dump DIR [--isa scalar|avx2|avx512]
//
// DIR holds what tools/llama_parity/layer_dump.cpp wrote for the same model (every tensor of
// llama.cpp's graphs for a prompt batch, step 0, and forced decode tokens, steps 1..). Two
// reports, at the given ISA level (default: the active one):
// - end to end: moed's evaluator runs the same tokens (the prompt as one sequence, then one
//   token per step); per step and layer, the largest difference of the residual stream
//   entering the layer from llama.cpp's (embd, l_out-<l-1>), and of the logits;
// - op by op (qwen3moe): each op of each layer runs on llama.cpp's own inputs and its output
//   is compared with llama.cpp's, so the first op whose sums differ shows whatever happened
//   before it: RMSNorms, the Q/K/V/output projections, q/k norms, RoPE, attention (over a KV
//   cache filled with llama.cpp's K and V), router, softmax, top-k, each expert's gate/up/
//   down, SwiGLU, the weighted sum, the residual adds, the output norm and head.
// Each line: step, layer, op, the number of values whose bits differ, the largest |difference|.
// Exit status 0 when every op matched bit for bit, 1 otherwise, 2 on bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/cli_util.h"

namespace {

using namespace moed;

[[noreturn]] void fail(const std::string& message) { tools::fail("layer-parity", message); }

struct entry {
    int step = 0;
    int node = 0;
    std::string name, op;
    std::int64_t ne[4] = {1, 1, 1, 1};
    std::int64_t count() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// The dump folder: the index, and tensors read on demand.
class dump {
public:
    explicit dump(std::string dir) : dir_(std::move(dir)) {
        std::ifstream in(dir_ + "/index.txt");
        if (!in) fail("cannot read " + dir_ + "/index.txt (made by tools/llama_parity/layer_dump.cpp)");
        entry e;
        while (in >> e.step >> e.node >> e.name >> e.op >> e.ne[0] >> e.ne[1] >> e.ne[2] >> e.ne[3]) {
            steps_ = std::max(steps_, e.step + 1);
            entries_.push_back(e);
        }
    }
    int steps() const { return steps_; }
    // The first node of `step` named `name` computed by `op` (after node `after`).
    const entry* find(int step, const std::string& name, const std::string& op, int after = -1) const {
        for (const entry& e : entries_) {
            if (e.step == step && e.name == name && e.op == op && e.node > after) return &e;
        }
        return nullptr;
    }
    const entry* next(const entry& e) const {
        for (const entry& x : entries_) {
            if (x.step == e.step && x.node == e.node + 1) return &x;
        }
        return nullptr;
    }
    std::vector<float> load(const entry& e) const {
        char path[1024];
        std::snprintf(path, sizeof path, "%s/s%02d_n%04d_%s.bin", dir_.c_str(), e.step, e.node, e.name.c_str());
        return read(path, static_cast<std::size_t>(e.count()));
    }
    std::vector<float> load(int step, const std::string& name, const std::string& op) const {
        const entry* e = find(step, name, op);
        if (e == nullptr) fail("step " + std::to_string(step) + " has no " + op + " node named " + name);
        return load(*e);
    }
    std::vector<float> logits(int step, std::size_t n_vocab) const {
        char path[1024];
        std::snprintf(path, sizeof path, "%s/s%02d_logits.bin", dir_.c_str(), step);
        return read(path, n_vocab);
    }

private:
    static std::vector<float> read(const char* path, std::size_t n) {
        std::ifstream in(path, std::ios::binary);
        std::vector<float> v(n);
        in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
        if (!in) fail(std::string("cannot read ") + path);
        return v;
    }
    std::string dir_;
    std::vector<entry> entries_;
    int steps_ = 0;
};

struct difference {
    std::int64_t values = 0;
    double max_abs = 0.0;
};

difference compare(const float* got, const float* want, std::size_t n) {
    difference d;
    for (std::size_t i = 0; i < n; ++i) {
        if (std::memcmp(&got[i], &want[i], sizeof(float)) == 0) continue;
        ++d.values;
        d.max_abs = std::max(d.max_abs, static_cast<double>(std::fabs(got[i] - want[i])));
    }
    return d;
}

// The per-op report and its totals.
class report {
public:
    void add(int step, int layer, const char* op, const std::vector<float>& got, const std::vector<float>& want) {
        const difference d = compare(got.data(), want.data(), std::min(got.size(), want.size()));
        difference& t = totals_[op];
        t.values += d.values;
        t.max_abs = std::max(t.max_abs, d.max_abs);
        if (d.values > 0) {
            std::printf("  step %2d layer %2d %-12s %7lld of %7zu differ, max |d| %.3g\n", step, layer, op,
                        static_cast<long long>(d.values), want.size(), d.max_abs);
        }
    }
    bool all_equal() const {
        return std::all_of(totals_.begin(), totals_.end(), [](const auto& t) { return t.second.values == 0; });
    }
    void print_totals() const {
        std::printf("op totals:\n");
        for (const auto& [op, t] : totals_) {
            std::printf("  %-12s %8lld values differ, max |d| %.3g\n", op.c_str(), static_cast<long long>(t.values), t.max_abs);
        }
    }

private:
    std::map<std::string, difference> totals_;
};

std::vector<kernels::sum_order> prompt_orders(std::int64_t n) {
    std::vector<kernels::sum_order> o(static_cast<std::size_t>(n));
    for (std::int64_t t = 0; t < n; ++t) o[static_cast<std::size_t>(t)] = kernels::prompt_token_order(t, n);
    return o;
}

std::vector<engine::token_id> token_ids(const std::vector<float>& raw) {
    std::vector<engine::token_id> ids(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) std::memcpy(&ids[i], &raw[i], sizeof(engine::token_id));
    return ids;
}

struct tokens {
    std::vector<engine::token_id> prompt;
    std::vector<engine::token_id> forced;  // one per decode step
};

tokens read_tokens(const std::string& dir) {
    std::ifstream in(dir + "/tokens.txt");
    if (!in) fail("cannot read " + dir + "/tokens.txt");
    tokens t;
    std::string line;
    for (auto* ids : {&t.prompt, &t.forced}) {
        std::getline(in, line);
        std::size_t at = 0;
        while (at < line.size()) {
            std::size_t used = 0;
            ids->push_back(static_cast<engine::token_id>(std::stol(line.substr(at), &used)));
            at += used;
            while (at < line.size() && line[at] == ' ') ++at;
        }
    }
    if (t.prompt.empty()) fail(dir + "/tokens.txt holds no prompt");
    return t;
}

// End to end: the evaluator's residual stream at each layer start, and its logits.
void end_to_end(engine::model& m, const dump& d, const tokens& toks) {
    const auto& hp = m.hparams();
    kernels::compute_pool pool(1);
    engine::evaluator eval(m, pool, static_cast<std::int64_t>(toks.prompt.size()));
    engine::kv_cache cache(engine::kv_shape_of(hp), hp.n_ctx_train);
    int step = 0;
    eval.add_layer_start_observer([&](const engine::lookahead_event& ev) {
        // The event numbers MoE layers; the dump, every layer (dense leading ones first).
        const std::uint32_t layer = ev.layer + hp.n_layer_dense_lead;
        const std::vector<float> want =
            layer == 0 ? d.load(step, "embd", "GET_ROWS") : d.load(step, "l_out-" + std::to_string(layer - 1), "ADD");
        const std::size_t n = std::min(want.size(), ev.stream.size());
        const float* got = ev.stream.data() + (ev.stream.size() - n);
        const float* wanted = want.data() + (want.size() - n);
        const difference diff = compare(got, wanted, n);
        // Which of the compared tokens differ: a sum order that depends on the token's place in
        // its batch (sum_order.h) shows as a run at the batch's end or start.
        const std::int64_t embd = hp.n_embd;
        std::int64_t first = -1, last = -1;
        for (std::int64_t t = 0; t < static_cast<std::int64_t>(n) / embd; ++t) {
            if (compare(got + t * embd, wanted + t * embd, static_cast<std::size_t>(embd)).values == 0) continue;
            if (first < 0) first = t;
            last = t;
        }
        std::printf("  step %2d layer %2u stream entering: %7lld of %7zu differ, max |d| %.3g", step, layer,
                    static_cast<long long>(diff.values), n, diff.max_abs);
        if (first >= 0) std::printf(" (tokens %lld..%lld of %lld)", static_cast<long long>(first), static_cast<long long>(last),
                                    static_cast<long long>(n) / embd);
        std::printf("\n");
    });
    std::printf("end to end (moed's evaluator on the same tokens):\n");
    std::vector<float> logits;
    for (step = 0; step < d.steps(); ++step) {
        std::span<const engine::token_id> ids(toks.prompt);
        if (step > 0) ids = std::span<const engine::token_id>(&toks.forced[static_cast<std::size_t>(step - 1)], 1);
        if (auto ran = eval.run_sequence(ids, cache, logits); !ran) fail(ran.error().message);
        const std::vector<float> want = d.logits(step, logits.size());
        const difference diff = compare(logits.data(), want.data(), logits.size());
        const auto got_top = std::max_element(logits.begin(), logits.end()) - logits.begin();
        const auto want_top = std::max_element(want.begin(), want.end()) - want.begin();
        std::printf("  step %2d logits: %7lld of %7zu differ, max |d| %.3g; argmax %lld, llama.cpp's %lld\n", step,
                    static_cast<long long>(diff.values), logits.size(), diff.max_abs, static_cast<long long>(got_top),
                    static_cast<long long>(want_top));
    }
}

// Op by op on llama.cpp's inputs (the qwen3moe graph: per-head q/k norms, NEOX RoPE, softmax
// routing renormalised over the chosen experts, no biases, no shared expert).
void op_by_op(engine::model& m, const dump& d, const tokens& toks, report& out) {
    const auto& hp = m.hparams();
    const std::int64_t embd = hp.n_embd;
    const int hd = hp.head_dim;
    const std::int64_t q_dim = static_cast<std::int64_t>(hp.n_head) * hd;
    const std::int64_t kv_dim = static_cast<std::int64_t>(hp.n_head_kv) * hd;
    const int k = static_cast<int>(hp.n_expert_used);
    const std::int64_t ff = hp.n_ff_exp;
    kernels::compute_pool pool(1);
    kernels::activation_buffer act;
    // K and V of every position so far, f16 as the caches hold them: [layer][pos][kv_dim].
    std::vector<std::vector<std::uint16_t>> k_cache(hp.n_layer), v_cache(hp.n_layer);
    std::vector<float> attn_scratch;
    std::int64_t pos0 = 0;
    std::printf("op by op (each op on llama.cpp's inputs):\n");
    for (int step = 0; step < d.steps(); ++step) {
        const std::int64_t n = step == 0 ? static_cast<std::int64_t>(toks.prompt.size()) : 1;
        // llama.cpp multiplies a prompt's tokens in a batch, each in its prompt order.
        const std::vector<kernels::sum_order> orders = prompt_orders(n);
        std::vector<float> stream = d.load(step, "embd", "GET_ROWS");
        for (std::uint32_t l = 0; l < hp.n_layer; ++l) {
            const std::string L = std::to_string(l);
            const int il = static_cast<int>(l);
            const engine::layer_weights& lw = m.layer(l);
            if (l > 0) stream = d.load(step, "l_out-" + std::to_string(l - 1), "ADD");
            std::vector<float> normed(stream.size());
            for (std::int64_t t = 0; t < n; ++t) {
                kernels::rms_norm(&stream[t * embd], lw.attn_norm, &normed[t * embd], embd, hp.rms_eps);
            }
            const std::vector<float> attn_norm = d.load(step, "attn_norm-" + L, "MUL");
            out.add(step, il, "attn_norm", normed, attn_norm);
            auto projection = [&](const kernels::matrix_view& w, const std::string& name, const char* label) {
                std::vector<float> y(static_cast<std::size_t>(n * w.rows));
                kernels::matmul(w, attn_norm.data(), n, y.data(), w.rows, pool, act, orders.data());
                std::vector<float> want = d.load(step, name, "MUL_MAT");
                out.add(step, il, label, y, want);
                return want;
            };
            const std::vector<float> q = projection(lw.wq, "Qcur-" + L, "wq");
            const std::vector<float> kk = projection(lw.wk, "Kcur-" + L, "wk");
            const std::vector<float> v = projection(lw.wv, "Vcur-" + L, "wv");
            std::vector<float> qn(q.size()), kn(kk.size());
            for (std::int64_t t = 0; t < n; ++t) {
                for (int h = 0; h < hp.n_head; ++h) kernels::rms_norm(&q[t * q_dim + h * hd], lw.q_norm, &qn[t * q_dim + h * hd], hd, hp.rms_eps);
                for (int h = 0; h < hp.n_head_kv; ++h) kernels::rms_norm(&kk[t * kv_dim + h * hd], lw.k_norm, &kn[t * kv_dim + h * hd], hd, hp.rms_eps);
            }
            std::vector<float> q_normed = d.load(step, "Qcur_normed-" + L, "MUL");
            std::vector<float> k_normed = d.load(step, "Kcur_normed-" + L, "MUL");
            out.add(step, il, "q_norm", qn, q_normed);
            out.add(step, il, "k_norm", kn, k_normed);
            const kernels::rope_scaling* scaling = hp.rope_scale ? &*hp.rope_scale : nullptr;
            for (std::int64_t t = 0; t < n; ++t) {
                kernels::rope_neox(&q_normed[t * q_dim], hp.n_head, hd, hp.n_rot, pos0 + t, hp.rope_freq_base, scaling);
                kernels::rope_neox(&k_normed[t * kv_dim], hp.n_head_kv, hd, hp.n_rot, pos0 + t, hp.rope_freq_base, scaling);
            }
            const std::vector<float> q_rope = d.load(step, "Qcur-" + L, "ROPE");
            const std::vector<float> k_rope = d.load(step, "Kcur-" + L, "ROPE");
            out.add(step, il, "rope_q", q_normed, q_rope);
            out.add(step, il, "rope_k", k_normed, k_rope);
            for (std::int64_t i = 0; i < n * kv_dim; ++i) {
                k_cache[l].push_back(kernels::fp32_to_fp16(k_rope[static_cast<std::size_t>(i)]));
                v_cache[l].push_back(kernels::fp32_to_fp16(v[static_cast<std::size_t>(i)]));
            }
            const std::vector<float> kqv_out = d.load(step, "kqv_out-" + L, "CONT");
            std::vector<float> attn(kqv_out.size());
            attn_scratch.resize(static_cast<std::size_t>((pos0 + n) * hp.n_head));
            for (std::int64_t t = 0; t < n; ++t) {
                for (int g = 0; g < hp.n_head_kv; ++g) {
                    kernels::attention_args a;
                    a.q = &q_rope[static_cast<std::size_t>(t * q_dim)];
                    a.k_cache = k_cache[l].data();
                    a.v_cache = v_cache[l].data();
                    a.n_kv = pos0 + t + 1;
                    a.n_head = hp.n_head;
                    a.n_head_kv = hp.n_head_kv;
                    a.head_dim = hd;
                    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
                    a.out = &attn[static_cast<std::size_t>(t * q_dim)];
                    a.order = orders[static_cast<std::size_t>(t)];
                    kernels::attention_group(a, g, attn_scratch.data());
                }
            }
            out.add(step, il, "attention", attn, kqv_out);
            const entry* kqv_node = d.find(step, "kqv_out-" + L, "CONT");
            const entry* wo_node = kqv_node != nullptr ? d.next(*kqv_node) : nullptr;
            if (wo_node == nullptr) fail("no node after kqv_out-" + L);
            const std::vector<float> wo_out = d.load(*wo_node);
            {
                std::vector<float> y(wo_out.size());
                kernels::matmul(lw.wo, kqv_out.data(), n, y.data(), embd, pool, act, orders.data());
                out.add(step, il, "wo", y, wo_out);
            }
            // The last layer keeps only the output token after attention (as llama.cpp).
            const std::vector<float> ffn_inp = d.load(step, "ffn_inp-" + L, "ADD");
            const std::int64_t nf = static_cast<std::int64_t>(ffn_inp.size()) / embd;
            {
                std::vector<float> sum(ffn_inp.size());
                for (std::int64_t t = 0; t < nf; ++t) {
                    for (std::int64_t i = 0; i < embd; ++i) {
                        const std::size_t at = static_cast<std::size_t>((n - nf + t) * embd + i);
                        sum[static_cast<std::size_t>(t * embd + i)] = wo_out[at] + stream[at];
                    }
                }
                out.add(step, il, "ffn_inp", sum, ffn_inp);
            }
            const std::vector<float> ffn_norm = d.load(step, "ffn_norm-" + L, "MUL");
            {
                std::vector<float> y(ffn_norm.size());
                for (std::int64_t t = 0; t < nf; ++t) kernels::rms_norm(&ffn_inp[t * embd], lw.ffn_norm, &y[t * embd], embd, hp.rms_eps);
                out.add(step, il, "ffn_norm", y, ffn_norm);
            }
            const std::vector<kernels::sum_order> ffn_orders = prompt_orders(nf);
            const std::vector<float> logits = d.load(step, "ffn_moe_logits-" + L, "MUL_MAT");
            {
                std::vector<float> y(logits.size());
                kernels::matmul(lw.router, ffn_norm.data(), nf, y.data(), hp.n_expert, pool, act, ffn_orders.data());
                out.add(step, il, "router", y, logits);
            }
            const std::vector<float> probs = d.load(step, "ffn_moe_probs-" + L, "SOFT_MAX");
            std::vector<std::int32_t> chosen(static_cast<std::size_t>(nf * k));
            std::vector<float> weights(static_cast<std::size_t>(nf * k));
            {
                std::vector<float> y = logits;
                for (std::int64_t t = 0; t < nf; ++t) kernels::softmax(&y[t * hp.n_expert], hp.n_expert);
                out.add(step, il, "softmax", y, probs);
                for (std::int64_t t = 0; t < nf; ++t) {
                    kernels::top_k_routing(&probs[t * hp.n_expert], static_cast<int>(hp.n_expert), k, &chosen[t * k], &weights[t * k]);
                }
                out.add(step, il, "route_w", weights, d.load(step, "ffn_moe_weights_norm-" + L, "DIV"));
                const std::vector<engine::token_id> want = token_ids(d.load(step, "ffn_moe_topk-" + L, "VIEW"));
                std::vector<float> got_ids(chosen.size()), want_ids(chosen.size());
                for (std::size_t i = 0; i < chosen.size(); ++i) {
                    got_ids[i] = static_cast<float>(chosen[i]);
                    want_ids[i] = static_cast<float>(want[i]);
                }
                out.add(step, il, "route_ids", got_ids, want_ids);
            }
            const std::vector<float> gate_ref = d.load(step, "ffn_moe_gate-" + L, "MUL_MAT_ID");
            const std::vector<float> up_ref = d.load(step, "ffn_moe_up-" + L, "MUL_MAT_ID");
            const std::vector<float> swiglu_ref = d.load(step, "ffn_moe_swiglu-" + L, "SWIGLU");
            const std::vector<float> down_ref = d.load(step, "ffn_moe_down-" + L, "MUL_MAT_ID");
            const std::vector<float> weighted_ref = d.load(step, "ffn_moe_weighted-" + L, "MUL");
            std::vector<float> gate(gate_ref.size()), up(up_ref.size()), act_out(swiglu_ref.size()), down(down_ref.size()),
                weighted(weighted_ref.size());
            std::vector<storage::expert_handle> handles;
            for (std::int64_t t = 0; t < nf; ++t) {
                for (int s = 0; s < k; ++s) {
                    const ExpertId id{l, static_cast<std::uint32_t>(chosen[static_cast<std::size_t>(t * k + s)])};
                    handles.clear();
                    if (auto got = m.experts().acquire_many(std::span<const ExpertId>(&id, 1), device_id::host(), handles); !got) {
                        fail(got.error().message);
                    }
                    const storage::expert_weights& w = handles[0].weights();
                    auto view = [](const storage::expert_matrix& em) {
                        return kernels::matrix_view{em.type, em.data, em.rows, em.cols, em.row_bytes};
                    };
                    const std::size_t row = static_cast<std::size_t>(t * k + s);
                    // llama.cpp's expert products take its vec_dot / gemv path: `alone`.
                    kernels::matmul(view(w.gate), &ffn_norm[t * embd], 1, &gate[row * ff], ff, pool, act);
                    kernels::matmul(view(w.up), &ffn_norm[t * embd], 1, &up[row * ff], ff, pool, act);
                    kernels::swiglu(&gate_ref[row * ff], &up_ref[row * ff], &act_out[row * ff], ff);
                    kernels::matmul(view(w.down), &swiglu_ref[row * ff], 1, &down[row * embd], embd, pool, act);
                    for (std::int64_t j = 0; j < embd; ++j) weighted[row * embd + j] = down_ref[row * embd + j] * weights[row];
                    for (auto& h : handles) h.release();
                }
            }
            out.add(step, il, "expert_gate", gate, gate_ref);
            out.add(step, il, "expert_up", up, up_ref);
            out.add(step, il, "swiglu", act_out, swiglu_ref);
            out.add(step, il, "expert_down", down, down_ref);
            out.add(step, il, "weighted", weighted, weighted_ref);
            const std::vector<float> moe_out = d.load(step, "ffn_moe_out-" + L, "ADD");
            const std::vector<float> l_out = d.load(step, "l_out-" + L, "ADD");
            std::vector<float> moe_sum(moe_out.size()), residual(l_out.size());
            for (std::int64_t t = 0; t < nf; ++t) {
                for (std::int64_t j = 0; j < embd; ++j) {
                    // In slot order, as llama.cpp adds the slots' views.
                    float sum = weighted_ref[static_cast<std::size_t>(t * k * embd + j)];
                    for (int s = 1; s < k; ++s) sum += weighted_ref[static_cast<std::size_t>((t * k + s) * embd + j)];
                    moe_sum[static_cast<std::size_t>(t * embd + j)] = sum;
                    residual[static_cast<std::size_t>(t * embd + j)] =
                        moe_out[static_cast<std::size_t>(t * embd + j)] + ffn_inp[static_cast<std::size_t>(t * embd + j)];
                }
            }
            out.add(step, il, "moe_sum", moe_sum, moe_out);
            out.add(step, il, "l_out", residual, l_out);
        }
        const std::vector<float> last = d.load(step, "l_out-" + std::to_string(hp.n_layer - 1), "ADD");
        const std::vector<float> result_norm = d.load(step, "result_norm", "MUL");
        std::vector<float> y(result_norm.size());
        kernels::rms_norm(last.data() + (last.size() - static_cast<std::size_t>(embd)), m.output_norm(), y.data(), embd, hp.rms_eps);
        out.add(step, -1, "output_norm", y, result_norm);
        const std::vector<float> head = d.load(step, "result_output", "MUL_MAT");
        std::vector<float> logits(head.size());
        kernels::matmul(m.output(), result_norm.data(), 1, logits.data(), hp.n_vocab, pool, act);
        out.add(step, -1, "output", logits, head);
        pos0 += n;
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string model_path, dump_dir;
    std::optional<kernels::isa> level;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-m") model_path = next();
        else if (a == "--dump") dump_dir = next();
        else if (a == "--isa") {
            const std::string v = next();
            level = kernels::parse_isa(v);
            if (!level) fail("--isa must be scalar, avx2 or avx512, not '" + v + "'");
        } else if (a == "-h" || a == "--help") {
            std::printf("usage: layer-parity -m MODEL.gguf --dump DIR [--isa scalar|avx2|avx512]\n");
            return 0;
        } else {
            fail("unknown argument '" + a + "' (see --help)");
        }
    }
    if (model_path.empty() || dump_dir.empty()) fail("give -m MODEL.gguf and --dump DIR");
    if (level) kernels::force_isa(*level);
    auto loaded = engine::model::load(model_path);
    if (!loaded) fail(loaded.error().message);
    engine::model& m = **loaded;
    const dump d(dump_dir);
    const tokens toks = read_tokens(dump_dir);
    if (static_cast<int>(toks.forced.size()) + 1 < d.steps()) fail(dump_dir + "/tokens.txt has fewer forced tokens than steps");
    std::printf("layer-parity: %s at %s, %d steps\n", model_path.c_str(), std::string(kernels::isa_name(kernels::active_isa())).c_str(),
                d.steps());
    end_to_end(m, d, toks);
    const auto& hp = m.hparams();
    if (hp.architecture != "qwen3moe") {
        std::printf("op by op: only the qwen3moe graph is known here (this is %s)\n", hp.architecture.c_str());
        return 0;
    }
    report out;
    op_by_op(m, d, toks, out);
    out.print_totals();
    return out.all_equal() ? 0 : 1;
}
