#include "engine/model.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>

#include "common/assert.h"
#include "common/process_memory.h"
#include "kernels/cpu/quantize.h"

namespace moed::engine {

namespace {

// A weight type the kernels multiply with: every type with block geometry but the
// activation-only ones.
bool computable(tensor_type type) {
    const auto traits = traits_of(static_cast<std::uint32_t>(type));
    return traits && traits->supported && type != tensor_type::q8_k && type != tensor_type::q8_1;
}

// The routed experts' stacked weights (their biases are small and stay with the dense
// weights).
bool is_routed_expert(const std::string& name) {
    return name.find("_exps.weight") != std::string::npos;
}

// A tensor of block n_layer or later: a multi-token prediction block the forward pass
// does not run (model_hparams::n_layer).
bool is_skipped_block(const std::string& name, std::uint32_t n_layer) {
    if (!name.starts_with("blk.")) return false;
    std::uint64_t block = 0;
    std::size_t i = 4;
    for (; i < name.size() && name[i] >= '0' && name[i] <= '9' && block < (1u << 20); ++i) block = block * 10 + (name[i] - '0');
    return i > 4 && i < name.size() && name[i] == '.' && block >= n_layer;
}

// The dense tensors a tiered model copies: all but the routed experts and skipped blocks.
bool is_copied_dense(const std::string& name, std::uint32_t n_layer) {
    return !is_routed_expert(name) && !is_skipped_block(name, n_layer);
}

// Reads file bytes [offset, offset + bytes) into dst with positional reads; `what` names
// them in errors.
result<void> read_exact(int fd, const std::string& path, std::byte* dst, std::uint64_t offset, std::uint64_t bytes,
                        std::string_view what) {
    std::uint64_t done = 0;
    while (done < bytes) {
        const ssize_t n = ::pread(fd, dst + done, bytes - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = n < 0 ? errno : 0;
            return make_error(errc::io, "{}: reading {} ({} bytes at offset {}): {}", path, what, bytes,
                              offset + done, err ? std::strerror(err) : "unexpected end of file");
        }
        done += static_cast<std::uint64_t>(n);
    }
    return {};
}

// The bytes copy_weights() copies: the whole tensor data with `all`, else every tensor but
// the routed experts and the skipped blocks, each rounded up to 64 bytes.
std::uint64_t copy_bytes(const storage::gguf_file& file, bool all, std::uint32_t n_layer) {
    if (all) return file.file_size() - file.data_offset();
    std::uint64_t total = 0;
    for (const auto& t : file.tensors()) {
        if (is_copied_dense(t.name, n_layer)) total += (t.size_bytes + 63) / 64 * 64;
    }
    return total;
}

// Copies the weights the model serves into owned memory with positional reads, then drops
// those pages from the page cache so the copy is the only resident instance. Nothing reads
// the file's mapping after load, so a file truncated or rewritten underneath cannot fault
// the process. With `all`, the data section keeps its layout (file offsets map to copy
// offsets by subtracting its start, as the resident expert source needs) but the skipped
// blocks are left out of the reads, so their part of the copy is never touched; otherwise every tensor but the routed experts and the blocks
// of n_layer and later, each at a 64-byte aligned offset. Returns the copy's offset of each
// tensor it holds.
// Reads go in pieces of at most options.piece_bytes, each reported to options.on_progress.
result<std::unordered_map<std::string, std::size_t>> copy_weights(const storage::gguf_file& file, bool all,
                                                                  std::uint32_t n_layer, const load_options& options,
                                                                  std::unique_ptr<std::byte[]>& storage,
                                                                  std::span<const std::byte>& image) {
    std::unordered_map<std::string, std::size_t> where;
    std::size_t total = 0;
    if (all) {
        total = static_cast<std::size_t>(file.file_size() - file.data_offset());
        for (const auto& t : file.tensors()) where[t.name] = t.offset - file.data_offset();
    } else {
        for (const auto& t : file.tensors()) {
            if (!is_copied_dense(t.name, n_layer)) continue;
            where[t.name] = total;
            total += (t.size_bytes + 63) / 64 * 64;
        }
    }
    MOED_ASSERT(total == copy_bytes(file, all, n_layer));
    storage = std::make_unique_for_overwrite<std::byte[]>(total + 64);
    const std::size_t shift = (64 - reinterpret_cast<std::uintptr_t>(storage.get()) % 64) % 64;
    std::byte* base = storage.get() + shift;
    image = {base, total};
    const int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        return make_error(errc::io, "{}: cannot open to copy the weights: {}", file.path(), std::strerror(err));
    }
    // The reads, planned first so progress knows its total: with `all`, runs of adjacent
    // tensors in one read each (alignment padding between tensors, less than a page, joins a
    // run); a skipped block's bytes are never read, so its pages of the copy are never
    // touched and cost no memory. Otherwise one read per copied tensor.
    struct planned_read {
        std::uint64_t offset;
        std::uint64_t bytes;
        std::byte* dst;
        const storage::gguf_tensor_info* only;  // the one tensor a read holds, else null
    };
    std::vector<planned_read> reads;
    if (all) {
        std::vector<const storage::gguf_tensor_info*> order;
        for (const auto& t : file.tensors()) {
            if (!is_skipped_block(t.name, n_layer)) order.push_back(&t);
        }
        std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->offset < b->offset; });
        for (std::size_t i = 0; i < order.size();) {
            const std::uint64_t start = order[i]->offset;
            std::uint64_t end = start + order[i]->size_bytes;
            std::size_t j = i + 1;
            for (; j < order.size() && order[j]->offset <= end + 4096; ++j) end = std::max(end, order[j]->offset + order[j]->size_bytes);
            reads.push_back({start, end - start, base + (start - file.data_offset()), j == i + 1 ? order[i] : nullptr});
            i = j;
        }
    } else {
        for (const auto& t : file.tensors()) {
            if (is_copied_dense(t.name, n_layer)) reads.push_back({t.offset, t.size_bytes, base + where[t.name], &t});
        }
    }
    std::uint64_t to_read = 0;
    for (const auto& r : reads) to_read += r.bytes;
    std::uint64_t read_so_far = 0;
    if (options.on_progress) options.on_progress(0, to_read);
    const std::uint64_t piece = std::max<std::uint64_t>(options.piece_bytes, 4096);
    result<void> done;
    for (const auto& r : reads) {
        const std::string what = r.only ? fmt::format("tensor '{}'", r.only->name) : std::string("the tensor data");
        for (std::uint64_t at = 0; at < r.bytes;) {
            const std::uint64_t n = std::min(piece, r.bytes - at);
            if (options.piece_delay.count() > 0) std::this_thread::sleep_for(options.piece_delay);
            done = read_exact(fd, file.path(), r.dst + at, r.offset + at, n, what);
            ::posix_fadvise(fd, static_cast<off_t>(r.offset + at), static_cast<off_t>(n), POSIX_FADV_DONTNEED);
            if (!done) break;
            at += n;
            read_so_far += n;
            if (options.on_progress) options.on_progress(read_so_far, to_read);
        }
        if (!done) break;
    }
    ::close(fd);
    if (!done) return unexpected(std::move(done).error());
    return where;
}

class loader {
public:
    explicit loader(const storage::gguf_file& file) : file_(file) {}
    // Tensors are read from `copy` at the given offsets.
    void use_copy(const std::byte* copy, std::unordered_map<std::string, std::size_t> offsets) {
        copy_ = copy;
        offsets_ = std::move(offsets);
    }
    const std::byte* data_of(const storage::gguf_tensor_info& t) const { return copy_ + offsets_.at(t.name); }

    // A 2-D weight [rows x cols] (ggml ne = {cols, rows}) in a type the kernels compute.
    result<kernels::matrix_view> matrix(const std::string& name, std::int64_t rows, std::int64_t cols) {
        auto info = file_.get_tensor(name);
        if (!info) return unexpected(std::move(info).error());
        const storage::gguf_tensor_info& t = **info;
        if (t.n_dims != 2 || t.ne[0] != cols || t.ne[1] != rows) {
            return make_error(errc::bad_file, "{}: tensor '{}' has shape [{}, {}], expected [{}, {}]",
                              file_.path(), name, t.ne[0], t.ne[1], cols, rows);
        }
        if (!computable(t.type)) {
            return make_error(errc::unsupported, "{}: tensor '{}' has type {}, which moed cannot compute with",
                              file_.path(), name, type_name(t.type));
        }
        return kernels::matrix_view{t.type, data_of(t), rows, cols, row_bytes(t.type, cols)};
    }

    // A stack of `n` weights [rows x cols] (ggml ne = {cols, rows, n}): the view of the
    // first (head_matrix() steps to the others). llama.cpp multiplies such a stack in a plain
    // (batched) product, which it never repacks.
    result<kernels::matrix_view> stack(const std::string& name, std::int64_t n, std::int64_t rows, std::int64_t cols) {
        auto info = file_.get_tensor(name);
        if (!info) return unexpected(std::move(info).error());
        const storage::gguf_tensor_info& t = **info;
        if (t.n_dims != 3 || t.ne[0] != cols || t.ne[1] != rows || t.ne[2] != n) {
            return make_error(errc::bad_file, "{}: tensor '{}' has shape [{}, {}, {}], expected [{}, {}, {}]",
                              file_.path(), name, t.ne[0], t.ne[1], t.n_dims > 2 ? t.ne[2] : 1, cols, rows, n);
        }
        if (!computable(t.type)) {
            return make_error(errc::unsupported, "{}: tensor '{}' has type {}, which moed cannot compute with",
                              file_.path(), name, type_name(t.type));
        }
        kernels::matrix_view view{t.type, data_of(t), rows, cols, row_bytes(t.type, cols)};
        view.repackable = false;
        return view;
    }

    // A 1-D weight of n values (or, with rows > 1, a 2-D one of rows x n), converted to f32
    // into owned storage.
    result<const float*> vector(const std::string& name, std::int64_t n, std::vector<std::vector<float>>& store,
                                std::int64_t rows = 1) {
        auto info = file_.get_tensor(name);
        if (!info) return unexpected(std::move(info).error());
        const storage::gguf_tensor_info& t = **info;
        const bool shape_ok = rows == 1 ? t.n_dims == 1 && t.ne[0] == n : t.n_dims == 2 && t.ne[0] == n && t.ne[1] == rows;
        if (!shape_ok) {
            return make_error(errc::bad_file, "{}: tensor '{}' has {} values in {} dims, expected {} x {}",
                              file_.path(), name, t.n_elements(), t.n_dims, rows, n);
        }
        n *= rows;
        if (!computable(t.type) || n % traits_of(static_cast<std::uint32_t>(t.type))->block_elems != 0) {
            return make_error(errc::unsupported, "{}: tensor '{}' has type {}, which moed cannot read as a vector",
                              file_.path(), name, type_name(t.type));
        }
        if (t.type == tensor_type::f32) return reinterpret_cast<const float*>(data_of(t));
        store.emplace_back(static_cast<std::size_t>(n));
        kernels::dequantize_row(t.type, data_of(t), store.back().data(), n);
        return static_cast<const float*>(store.back().data());
    }

private:
    const storage::gguf_file& file_;
    const std::byte* copy_ = nullptr;
    std::unordered_map<std::string, std::size_t> offsets_;
};

// Binds block l's multi-head latent attention (model_hparams::mla): attn_k_b and attn_v_b
// for the absorbed form, attn_kv_b (every head's non-rotary key and value from the latent)
// for the decompressed form of older files.
result<void> bind_mla(loader& ld, const storage::gguf_file& file, const model_hparams& hp, std::uint32_t l,
                      layer_weights& lw, std::vector<std::vector<float>>& store) {
    const mla_config& mla = hp.mla;
    auto name = [l](const char* what) { return fmt::format("blk.{}.{}", l, what); };
    auto take_matrix = [&](kernels::matrix_view& dst, const char* what, std::int64_t rows,
                           std::int64_t cols) -> result<void> {
        auto v = ld.matrix(name(what), rows, cols);
        if (!v) return unexpected(std::move(v).error());
        dst = *v;
        return {};
    };
    auto take_vector = [&](const float*& dst, const char* what, std::int64_t n) -> result<void> {
        auto v = ld.vector(name(what), n, store);
        if (!v) return unexpected(std::move(v).error());
        dst = *v;
        return {};
    };
    auto take_stack = [&](kernels::matrix_view& dst, const char* what, std::int64_t rows,
                          std::int64_t cols) -> result<void> {
        auto v = ld.stack(name(what), hp.n_head, rows, cols);
        if (!v) return unexpected(std::move(v).error());
        dst = *v;
        return {};
    };
    const std::int64_t q_head = static_cast<std::int64_t>(mla.qk_nope_dim) + hp.n_rot;
    const std::int64_t q_dim = q_head * hp.n_head;
    if (mla.q_lora_rank > 0) {
        MOED_TRY(take_matrix(lw.wq_a, "attn_q_a.weight", mla.q_lora_rank, hp.n_embd));
        MOED_TRY(take_vector(lw.q_a_norm, "attn_q_a_norm.weight", mla.q_lora_rank));
        MOED_TRY(take_matrix(lw.wq_b, "attn_q_b.weight", q_dim, mla.q_lora_rank));
    } else {
        MOED_TRY(take_matrix(lw.wq, "attn_q.weight", q_dim, hp.n_embd));
    }
    MOED_TRY(take_matrix(lw.wkv_a, "attn_kv_a_mqa.weight", static_cast<std::int64_t>(mla.kv_lora_rank) + hp.n_rot,
                         hp.n_embd));
    MOED_TRY(take_vector(lw.kv_a_norm, "attn_kv_a_norm.weight", mla.kv_lora_rank));
    if (mla.absorbed) {
        if (file.find_tensor(name("attn_k_b.weight")) == nullptr && file.find_tensor(name("attn_kv_b.weight")) != nullptr) {
            return make_error(errc::bad_file,
                              "{}: tensor '{}' is the decompressed form's, but the keys (key_length_mla) are the "
                              "absorbed form's, which needs attn_k_b and attn_v_b",
                              file.path(), name("attn_kv_b.weight"));
        }
        MOED_TRY(take_stack(lw.wk_b, "attn_k_b.weight", mla.kv_lora_rank, mla.qk_nope_dim));
        MOED_TRY(take_stack(lw.wv_b, "attn_v_b.weight", mla.v_head_dim, mla.kv_lora_rank));
    } else {
        MOED_TRY(take_matrix(lw.wkv_b, "attn_kv_b.weight",
                             static_cast<std::int64_t>(hp.n_head) * (mla.qk_nope_dim + mla.v_head_dim), mla.kv_lora_rank));
    }
    MOED_TRY(take_matrix(lw.wo, "attn_output.weight", hp.n_embd, static_cast<std::int64_t>(mla.v_head_dim) * hp.n_head));
    return {};
}

}  // namespace

result<std::unique_ptr<model>> model::load(const std::string& path, const load_options& options) {
    auto opened = storage::gguf_file::open(path);
    if (!opened) return unexpected(std::move(opened).error());
    std::unique_ptr<model> m(new model());
    m->file_ = std::move(opened).value();
    const storage::gguf_file& file = *m->file_;

    auto arch_name = file.get_string("general.architecture");
    if (!arch_name) return unexpected(std::move(arch_name).error());
    auto arch = find_architecture(file, *arch_name);
    if (!arch) return unexpected(std::move(arch).error());
    model_hparams& hp = m->hparams_;
    hp.architecture = std::string(*arch_name);
    MOED_TRY((*arch)->configure(file, hp));

    auto tok = tokenizer::from_gguf(file);
    if (!tok) return unexpected(std::move(tok).error());
    m->tokenizer_ = std::move(tok).value();
    hp.n_vocab = m->tokenizer_->n_vocab();

    // The experts' layout comes first: the memory check below needs their bytes, and a bad
    // layout then fails before anything large is allocated.
    auto layout = storage::expert_layout::from_gguf(file, stacked_expert_names(hp), hp.n_expert, hp.n_embd, hp.n_ff_exp);
    if (!layout) return unexpected(std::move(layout).error());
    m->layout_ = std::move(layout).value();
    const std::uint64_t every_expert_bytes = storage::tiered_every_expert_bytes(m->layout_, host_slot_alignment);
    MOED_TRY(check_load_fits(options.host_budget, m->expert_bytes(), every_expert_bytes,
                             copy_bytes(file, !options.host_budget, hp.n_layer),
                             options.physical_memory_bytes != 0 ? options.physical_memory_bytes
                                                                : physical_memory_bytes()));

    // Tiered: the dense weights are copied, experts come through the tiers. Resident: the
    // whole data section is copied and experts are served from that copy.
    loader ld(file);
    {
        auto offsets = copy_weights(file, !options.host_budget, hp.n_layer, options, m->weights_storage_, m->weights_);
        if (!offsets) return unexpected(std::move(offsets).error());
        ld.use_copy(m->weights_.data(), std::move(offsets).value());
    }
    const std::int64_t q_dim = static_cast<std::int64_t>(hp.n_head) * hp.head_dim;
    const std::int64_t kv_dim = static_cast<std::int64_t>(hp.n_head_kv) * hp.head_dim;
    auto embd = ld.matrix("token_embd.weight", hp.n_vocab, hp.n_embd);
    if (!embd) return unexpected(std::move(embd).error());
    m->token_embd_ = *embd;
    if (file.find_tensor("output.weight")) {
        auto out = ld.matrix("output.weight", hp.n_vocab, hp.n_embd);
        if (!out) return unexpected(std::move(out).error());
        m->output_ = *out;
    } else {
        m->output_ = m->token_embd_;  // tied embeddings
    }
    auto out_norm = ld.vector("output_norm.weight", hp.n_embd, m->owned_vectors_);
    if (!out_norm) return unexpected(std::move(out_norm).error());
    m->output_norm_ = *out_norm;

    m->layers_.resize(hp.n_layer);
    for (std::uint32_t l = 0; l < hp.n_layer; ++l) {
        layer_weights& lw = m->layers_[l];
        // `what` is the tensor's name within the block ("attn_q.weight").
        auto name = [l](const char* what) { return fmt::format("blk.{}.{}", l, what); };
        auto take_matrix = [&](kernels::matrix_view& dst, const char* what, std::int64_t rows,
                               std::int64_t cols) -> result<void> {
            auto v = ld.matrix(name(what), rows, cols);
            if (!v) return unexpected(std::move(v).error());
            dst = *v;
            return {};
        };
        auto take_vector = [&](const float*& dst, const char* what, std::int64_t n) -> result<void> {
            auto v = ld.vector(name(what), n, m->owned_vectors_);
            if (!v) return unexpected(std::move(v).error());
            dst = *v;
            return {};
        };
        auto take_optional_vector = [&](const float*& dst, const char* what, std::int64_t n) -> result<void> {
            if (!file.find_tensor(name(what))) return {};
            return take_vector(dst, what, n);
        };
        MOED_TRY(take_vector(lw.attn_norm, "attn_norm.weight", hp.n_embd));
        if (hp.mla.enabled()) {
            MOED_TRY(bind_mla(ld, file, hp, l, lw, m->owned_vectors_));
        } else {
            MOED_TRY(take_matrix(lw.wq, "attn_q.weight", q_dim, hp.n_embd));
            MOED_TRY(take_matrix(lw.wk, "attn_k.weight", kv_dim, hp.n_embd));
            MOED_TRY(take_matrix(lw.wv, "attn_v.weight", kv_dim, hp.n_embd));
            MOED_TRY(take_matrix(lw.wo, "attn_output.weight", hp.n_embd, q_dim));
        }
        if (hp.qkv_bias) {
            MOED_TRY(take_optional_vector(lw.bq, "attn_q.bias", q_dim));
            MOED_TRY(take_optional_vector(lw.bk, "attn_k.bias", kv_dim));
            MOED_TRY(take_optional_vector(lw.bv, "attn_v.bias", kv_dim));
        }
        switch (hp.qk_norm) {
            case qk_norm_kind::none: break;
            case qk_norm_kind::per_head:
                MOED_TRY(take_vector(lw.q_norm, "attn_q_norm.weight", hp.head_dim));
                MOED_TRY(take_vector(lw.k_norm, "attn_k_norm.weight", hp.head_dim));
                break;
            case qk_norm_kind::whole:
                MOED_TRY(take_vector(lw.q_norm, "attn_q_norm.weight", q_dim));
                MOED_TRY(take_vector(lw.k_norm, "attn_k_norm.weight", kv_dim));
                break;
        }
        if (hp.attn_out_bias) MOED_TRY(take_vector(lw.bo, "attn_output.bias", hp.n_embd));
        if (hp.attn_sinks) MOED_TRY(take_vector(lw.sinks, "attn_sinks.weight", hp.n_head));
        MOED_TRY(take_vector(lw.ffn_norm, fmt::format("{}.weight", (*arch)->ffn_norm).c_str(), hp.n_embd));
        if (!hp.is_moe_layer(l)) {
            MOED_TRY(take_matrix(lw.ffn_gate, "ffn_gate.weight", hp.n_ff, hp.n_embd));
            MOED_TRY(take_matrix(lw.ffn_up, "ffn_up.weight", hp.n_ff, hp.n_embd));
            MOED_TRY(take_matrix(lw.ffn_down, "ffn_down.weight", hp.n_embd, hp.n_ff));
            continue;
        }
        MOED_TRY(take_matrix(lw.router, "ffn_gate_inp.weight", hp.n_expert, hp.n_embd));
        if (hp.routing.bias) MOED_TRY(take_vector(lw.router_bias, "ffn_gate_inp.bias", hp.n_expert));
        if (hp.routing.selection_bias) MOED_TRY(take_vector(lw.selection_bias, "exp_probs_b.bias", hp.n_expert));
        if (hp.expert_bias) {
            auto take_rows = [&](const float*& dst, const char* what, std::int64_t n) -> result<void> {
                auto v = ld.vector(name(what), n, m->owned_vectors_, hp.n_expert);
                if (!v) return unexpected(std::move(v).error());
                dst = *v;
                return {};
            };
            MOED_TRY(take_rows(lw.expert_gate_bias, "ffn_gate_exps.bias", hp.n_ff_exp));
            MOED_TRY(take_rows(lw.expert_up_bias, "ffn_up_exps.bias", hp.n_ff_exp));
            MOED_TRY(take_rows(lw.expert_down_bias, "ffn_down_exps.bias", hp.n_embd));
        }
        if (const std::int64_t ff = hp.shared_expert.n_ff; ff > 0) {
            MOED_TRY(take_matrix(lw.shared_gate, "ffn_gate_shexp.weight", ff, hp.n_embd));
            MOED_TRY(take_matrix(lw.shared_up, "ffn_up_shexp.weight", ff, hp.n_embd));
            MOED_TRY(take_matrix(lw.shared_down, "ffn_down_shexp.weight", hp.n_embd, ff));
            if (hp.shared_expert.gated) {
                // A vector in the file; the evaluator multiplies it as a one-row f32 matrix.
                const float* gate_inp = nullptr;
                MOED_TRY(take_vector(gate_inp, "ffn_gate_inp_shexp.weight", hp.n_embd));
                lw.shared_gate_inp = kernels::matrix_view{tensor_type::f32, gate_inp, 1, hp.n_embd,
                                                          static_cast<std::size_t>(hp.n_embd) * sizeof(float)};
            }
        }
    }

    for (std::uint32_t l = 0; l < m->layout_.n_layer; ++l) {
        const auto& lt = m->layout_.layers[l];
        for (tensor_type t : {lt.gate_type, lt.up_type, lt.down_type}) {
            if (!computable(t)) {
                return make_error(errc::unsupported, "{}: layer {} experts have type {}, which moed cannot compute with",
                                  path, l + hp.n_layer_dense_lead, type_name(t));
            }
        }
    }
    if (options.host_budget) {
        storage::tiered_options tier = options.tier;
        m->host_budget_ = cap_host_budget(*options.host_budget, m->expert_bytes(), every_expert_bytes);
        tier.host_budget_bytes = m->host_budget_.bytes;
        // The ring's sections are sized for a layer's predicted top-2k (room for the next
        // layer's prefetch while this one computes).
        if (tier.slots_per_layer == 0) tier.slots_per_layer = 2 * hp.n_expert_used;
        // A changed file is the same model again only with the same header.
        tier.header_bytes = file.data_offset();
        auto tiered = storage::create_tiered_source(path, m->layout_, tier);
        if (!tiered) return unexpected(std::move(tiered).error());
        m->experts_ = std::move(tiered).value();
    } else {
        m->experts_ = std::make_unique<storage::resident_expert_source>(path, m->layout_, m->weights_,
                                                                        file.data_offset());
    }
    m->file_->release_mapping();  // everything served lives in owned memory now
    return m;
}

void model::set_expert_source(std::unique_ptr<storage::expert_source> source) {
    experts_ = std::move(source);
}

std::uint64_t model::expert_bytes() const noexcept {
    std::uint64_t total = 0;
    for (std::uint32_t l = 0; l < layout_.n_layer; ++l) total += layout_.expert_bytes(l) * layout_.n_expert;
    return total;
}

std::uint64_t model::dense_bytes() const noexcept {
    std::uint64_t total = 0;
    for (const auto& t : file_->tensors()) {
        if (is_copied_dense(t.name, hparams_.n_layer)) total += t.size_bytes;
    }
    return total;
}

}  // namespace moed::engine
