// expert_layout::from_gguf and resident_expert_source.
//
// What it checks, and how: a tiny qwen3moe-like GGUF is built with the writer, holding per
// layer the stacked expert tensors blk.N.ffn_{gate,up,down}_exps.weight (ne = {n_embd, n_ff,
// n_expert} for gate/up, {n_ff, n_embd, n_expert} for down) plus unrelated dense tensors so
// the expert tensors sit at non-trivial offsets. Every F32 value encodes (layer, matrix,
// expert, row, col), so a handle pointing one expert, one matrix or one row off is caught.
// For each ExpertId the handle's three matrices must hold exactly the bytes written, with
// the right type, rows, cols and row_bytes. Mixed storage types (F16/Q8_0/F32 in one layer)
// are checked by comparing raw bytes. Out-of-range ids, missing tensors and wrong shapes
// must give errors naming the file and the expert or tensor. The bundled model's layout is
// read from its own metadata as a smoke test.
#include <gtest/gtest.h>

#include <cstring>

#include <fmt/format.h>

#include "storage/expert_source.h"
#include "storage/gguf.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

using bytes_t = std::vector<std::byte>;

constexpr std::uint32_t n_layer = 2;
constexpr std::uint32_t n_expert = 4;
constexpr std::int64_t n_embd = 8;
constexpr std::int64_t n_ff = 6;

// The value stored at (layer, matrix, expert, row, col); all exactly representable in F32.
float code(std::uint32_t layer, int matrix, std::uint32_t expert, std::int64_t row,
           std::int64_t col) {
    return static_cast<float>(layer * 100000 + matrix * 10000 + expert * 1000 + row * 10 + col);
}

// A stacked tensor [n_expert][rows][cols] of codes.
bytes_t stacked_f32(std::uint32_t layer, int matrix, std::int64_t rows, std::int64_t cols) {
    std::vector<float> values;
    for (std::uint32_t e = 0; e < n_expert; ++e) {
        for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t c = 0; c < cols; ++c) values.push_back(code(layer, matrix, e, r, c));
        }
    }
    bytes_t out(values.size() * sizeof(float));
    std::memcpy(out.data(), values.data(), out.size());
    return out;
}

bytes_t pattern(std::size_t n, std::uint8_t seed) {
    bytes_t out(n);
    for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<std::byte>((k * 13 + seed) & 0xff);
    return out;
}

void add_layer(gguf_writer& w, std::uint32_t l) {
    w.add_tensor(fmt::format("blk.{}.attn_norm.weight", l), tensor_type::f32, {n_embd},
                 pattern(4 * n_embd, static_cast<std::uint8_t>(l)));
    w.add_tensor(fmt::format("blk.{}.ffn_gate_exps.weight", l), tensor_type::f32,
                 {n_embd, n_ff, n_expert}, stacked_f32(l, 0, n_ff, n_embd));
    w.add_tensor(fmt::format("blk.{}.ffn_up_exps.weight", l), tensor_type::f32,
                 {n_embd, n_ff, n_expert}, stacked_f32(l, 1, n_ff, n_embd));
    w.add_tensor(fmt::format("blk.{}.ffn_down_exps.weight", l), tensor_type::f32,
                 {n_ff, n_embd, n_expert}, stacked_f32(l, 2, n_embd, n_ff));
}

gguf_writer tiny_writer() {
    gguf_writer w;
    w.set_string("general.architecture", "qwen3moe");
    w.set_u32("qwen3moe.block_count", n_layer);
    w.set_u32("qwen3moe.expert_count", n_expert);
    w.set_u32("qwen3moe.embedding_length", n_embd);
    w.set_u32("qwen3moe.expert_feed_forward_length", n_ff);
    w.add_tensor("token_embd.weight", tensor_type::f32, {n_embd, 3}, pattern(4 * n_embd * 3, 9));
    for (std::uint32_t l = 0; l < n_layer; ++l) add_layer(w, l);
    return w;
}

std::unique_ptr<gguf_file> open_written(const gguf_writer& w, const std::string& name) {
    const std::string path = (moed::test::temp_dir() / name).string();
    auto r = w.write(path);
    EXPECT_TRUE(r) << r.error().message;
    auto f = gguf_file::open(path);
    EXPECT_TRUE(f) << f.error().message;
    return f ? std::move(f).value() : nullptr;
}

void expect_matrix(const expert_matrix& m, std::uint32_t layer, int matrix, std::uint32_t expert,
                   std::int64_t rows, std::int64_t cols) {
    EXPECT_EQ(m.type, tensor_type::f32);
    EXPECT_EQ(m.rows, rows);
    EXPECT_EQ(m.cols, cols);
    EXPECT_EQ(m.row_bytes, static_cast<std::size_t>(cols) * 4);
    ASSERT_NE(m.data, nullptr);
    const auto* bytes = static_cast<const std::byte*>(m.data);
    for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t c = 0; c < cols; ++c) {
            float v;
            std::memcpy(&v, bytes + r * m.row_bytes + c * 4, 4);
            ASSERT_EQ(v, code(layer, matrix, expert, r, c))
                << "layer " << layer << " matrix " << matrix << " expert " << expert << " row "
                << r << " col " << c;
        }
    }
}

template <typename T>
void expect_error(const result<T>& r, errc code, std::initializer_list<std::string_view> needles) {
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, code) << r.error().message;
    for (std::string_view n : needles) {
        EXPECT_NE(r.error().message.find(n), std::string::npos)
            << "message lacks '" << n << "': " << r.error().message;
    }
}

TEST(expert_layout, reads_stacked_tensors) {
    auto file = open_written(tiny_writer(), "layout.gguf");
    ASSERT_TRUE(file);
    auto layout = expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert, n_embd, n_ff);
    ASSERT_TRUE(layout) << layout.error().message;
    EXPECT_EQ(layout->n_layer, n_layer);
    EXPECT_EQ(layout->n_expert, n_expert);
    ASSERT_EQ(layout->layers.size(), n_layer);
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        const auto& lt = layout->layers[l];
        EXPECT_EQ(lt.gate_offset, (*file->get_tensor(fmt::format("blk.{}.ffn_gate_exps.weight", l)))->offset);
        EXPECT_EQ(lt.down_offset, (*file->get_tensor(fmt::format("blk.{}.ffn_down_exps.weight", l)))->offset);
        EXPECT_EQ(lt.gate_bytes, static_cast<std::size_t>(n_ff * n_embd * 4));
        EXPECT_EQ(lt.up_bytes, static_cast<std::size_t>(n_ff * n_embd * 4));
        EXPECT_EQ(lt.down_bytes, static_cast<std::size_t>(n_embd * n_ff * 4));
        EXPECT_EQ(layout->expert_bytes(l), static_cast<std::size_t>(3 * n_ff * n_embd * 4));
    }
}

TEST(resident_expert_source, every_expert_has_its_own_bytes) {
    auto file = open_written(tiny_writer(), "resident.gguf");
    ASSERT_TRUE(file);
    auto layout = expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert, n_embd, n_ff);
    ASSERT_TRUE(layout) << layout.error().message;
    resident_expert_source source(*file, *layout);
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        for (std::uint32_t e = 0; e < n_expert; ++e) {
            auto h = source.acquire(ExpertId{l, e}, device_id::host());
            ASSERT_TRUE(h) << h.error().message;
            EXPECT_TRUE(h->valid());
            EXPECT_EQ(h->id(), (ExpertId{l, e}));
            expect_matrix(h->weights().gate, l, 0, e, n_ff, n_embd);
            expect_matrix(h->weights().up, l, 1, e, n_ff, n_embd);
            expect_matrix(h->weights().down, l, 2, e, n_embd, n_ff);
            // The matrices point into the file's mapping.
            const auto map = file->mapping();
            const auto* p = static_cast<const std::byte*>(h->weights().down.data);
            EXPECT_GE(p, map.data());
            EXPECT_LE(p + n_embd * n_ff * 4, map.data() + map.size());
        }
    }
}

TEST(resident_expert_source, acquire_many_keeps_order_and_handles_move) {
    auto file = open_written(tiny_writer(), "many.gguf");
    ASSERT_TRUE(file);
    auto layout = expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert, n_embd, n_ff);
    ASSERT_TRUE(layout) << layout.error().message;
    resident_expert_source source(*file, *layout);
    const std::vector<ExpertId> ids = {{1, 3}, {0, 0}, {1, 1}, {1, 3}};
    std::vector<expert_handle> handles;
    ASSERT_TRUE(source.acquire_many(ids, device_id::host(), handles));
    ASSERT_EQ(handles.size(), ids.size());
    for (std::size_t k = 0; k < ids.size(); ++k) {
        EXPECT_EQ(handles[k].id(), ids[k]);
        expect_matrix(handles[k].weights().up, ids[k].layer, 1, ids[k].expert, n_ff, n_embd);
    }
    expert_handle moved = std::move(handles[0]);
    EXPECT_TRUE(moved.valid());
    EXPECT_FALSE(handles[0].valid());  // NOLINT(bugprone-use-after-move): checking the move
    moved.release();
    EXPECT_FALSE(moved.valid());

    // One bad id fails the whole call and leaves no handles behind.
    const std::vector<ExpertId> bad = {{0, 1}, {0, n_expert}};
    auto r = source.acquire_many(bad, device_id::host(), handles);
    expect_error(r, errc::invalid_argument, {"expert 0/4 out of range"});
    EXPECT_TRUE(handles.empty());
}

TEST(resident_expert_source, rejects_out_of_range_ids) {
    auto file = open_written(tiny_writer(), "range.gguf");
    ASSERT_TRUE(file);
    auto layout = expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert, n_embd, n_ff);
    ASSERT_TRUE(layout) << layout.error().message;
    resident_expert_source source(*file, *layout);
    expect_error(source.acquire(ExpertId{n_layer, 0}, device_id::host()), errc::invalid_argument,
                 {file->path(), "expert 2/0 out of range", "2 layers x 4 experts"});
    expect_error(source.acquire(ExpertId{0, n_expert}, device_id::host()), errc::invalid_argument,
                 {file->path(), "expert 0/4 out of range"});
    expect_error(source.acquire(ExpertId{~0u, ~0u}, device_id::host()), errc::invalid_argument, {file->path()});
}

TEST(expert_layout, rejects_wrong_shapes) {
    auto file = open_written(tiny_writer(), "shapes.gguf");
    ASSERT_TRUE(file);
    const std::string& path = file->path();
    expect_error(expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert, n_embd + 1, n_ff),
                 errc::bad_file,
                 {path, "'blk.0.ffn_gate_exps.weight'", "[8, 6, 4]", "expected [9, 6, 4]"});
    expect_error(expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert, n_embd, n_ff - 1),
                 errc::bad_file, {path, "'blk.0.ffn_gate_exps.weight'", "expected [8, 5, 4]"});
    expect_error(expert_layout::from_gguf(*file, test::stacked_names(n_layer), n_expert + 1, n_embd, n_ff),
                 errc::bad_file, {path, "expected [8, 6, 5]"});
    // More layers than the file has: the first missing tensor is named.
    expect_error(expert_layout::from_gguf(*file, test::stacked_names(n_layer + 1), n_expert, n_embd, n_ff),
                 errc::not_found, {path, "'blk.2.ffn_gate_exps.weight'"});
    // Zero experts is a shape error, never a division by zero.
    expect_error(expert_layout::from_gguf(*file, test::stacked_names(n_layer), 0, n_embd, n_ff), errc::bad_file,
                 {path, "expected [8, 6, 0]"});
}

TEST(expert_layout, rejects_transposed_and_flat_tensors) {
    gguf_writer w;
    // Layer 0: down stored with gate's shape (transposed).
    w.add_tensor("blk.0.ffn_gate_exps.weight", tensor_type::f32, {n_embd, n_ff, n_expert},
                 stacked_f32(0, 0, n_ff, n_embd));
    w.add_tensor("blk.0.ffn_up_exps.weight", tensor_type::f32, {n_embd, n_ff, n_expert},
                 stacked_f32(0, 1, n_ff, n_embd));
    w.add_tensor("blk.0.ffn_down_exps.weight", tensor_type::f32, {n_embd, n_ff, n_expert},
                 stacked_f32(0, 2, n_ff, n_embd));
    auto file = open_written(w, "transposed.gguf");
    ASSERT_TRUE(file);
    expect_error(expert_layout::from_gguf(*file, test::stacked_names(1), n_expert, n_embd, n_ff), errc::bad_file,
                 {file->path(), "'blk.0.ffn_down_exps.weight'", "expected [6, 8, 4]"});

    gguf_writer flat;
    // Layer 0: up as a 2-d tensor with the same element count.
    flat.add_tensor("blk.0.ffn_gate_exps.weight", tensor_type::f32, {n_embd, n_ff, n_expert},
                    stacked_f32(0, 0, n_ff, n_embd));
    flat.add_tensor("blk.0.ffn_up_exps.weight", tensor_type::f32, {n_embd, n_ff * n_expert},
                    stacked_f32(0, 1, n_ff, n_embd));
    flat.add_tensor("blk.0.ffn_down_exps.weight", tensor_type::f32, {n_ff, n_embd, n_expert},
                    stacked_f32(0, 2, n_embd, n_ff));
    auto flat_file = open_written(flat, "flat.gguf");
    ASSERT_TRUE(flat_file);
    expect_error(expert_layout::from_gguf(*flat_file, test::stacked_names(1), n_expert, n_embd, n_ff), errc::bad_file,
                 {flat_file->path(), "'blk.0.ffn_up_exps.weight'", "2 dims"});
}

// Gate, up and down in different storage types (as a Q4_K_M file mixes them): each matrix's
// bytes and row size follow its own type.
TEST(resident_expert_source, mixed_storage_types) {
    constexpr std::int64_t embd = 32, ff = 64;
    constexpr std::uint32_t experts = 3;
    const std::size_t gate_expert_bytes = ff * embd * 2;               // F16
    const std::size_t up_expert_bytes = ff * (embd / 32) * 34;         // Q8_0
    const std::size_t down_expert_bytes = embd * (ff / 32) * 34;       // Q8_0
    const bytes_t gate = pattern(gate_expert_bytes * experts, 1);
    const bytes_t up = pattern(up_expert_bytes * experts, 2);
    const bytes_t down = pattern(down_expert_bytes * experts, 3);
    gguf_writer w;
    w.add_tensor("blk.0.ffn_gate_exps.weight", tensor_type::f16, {embd, ff, experts}, gate);
    w.add_tensor("blk.0.ffn_up_exps.weight", tensor_type::q8_0, {embd, ff, experts}, up);
    w.add_tensor("blk.0.ffn_down_exps.weight", tensor_type::q8_0, {ff, embd, experts}, down);
    auto file = open_written(w, "mixed.gguf");
    ASSERT_TRUE(file);
    auto layout = expert_layout::from_gguf(*file, test::stacked_names(1), experts, embd, ff);
    ASSERT_TRUE(layout) << layout.error().message;
    EXPECT_EQ(layout->expert_bytes(0), gate_expert_bytes + up_expert_bytes + down_expert_bytes);
    resident_expert_source source(*file, *layout);
    for (std::uint32_t e = 0; e < experts; ++e) {
        auto h = source.acquire(ExpertId{0, e}, device_id::host());
        ASSERT_TRUE(h) << h.error().message;
        const expert_weights& wts = h->weights();
        EXPECT_EQ(wts.gate.type, tensor_type::f16);
        EXPECT_EQ(wts.gate.row_bytes, static_cast<std::size_t>(embd * 2));
        EXPECT_EQ(wts.up.type, tensor_type::q8_0);
        EXPECT_EQ(wts.up.row_bytes, 34u);
        EXPECT_EQ(wts.down.rows, embd);
        EXPECT_EQ(wts.down.cols, ff);
        EXPECT_EQ(wts.down.row_bytes, 68u);
        EXPECT_EQ(std::memcmp(wts.gate.data, gate.data() + e * gate_expert_bytes, gate_expert_bytes), 0);
        EXPECT_EQ(std::memcmp(wts.up.data, up.data() + e * up_expert_bytes, up_expert_bytes), 0);
        EXPECT_EQ(std::memcmp(wts.down.data, down.data() + e * down_expert_bytes, down_expert_bytes), 0);
    }
}

TEST(expert_layout, bundled_model) {
    auto file = gguf_file::open(moed::test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
    ASSERT_TRUE(file) << file.error().message;
    const gguf_file& f = **file;
    const auto layers = f.get_uint("qwen3moe.block_count");
    const auto experts = f.get_uint("qwen3moe.expert_count");
    const auto embd = f.get_uint("qwen3moe.embedding_length");
    const auto ff = f.get_uint("qwen3moe.expert_feed_forward_length");
    ASSERT_TRUE(layers && experts && embd && ff);
    auto layout = expert_layout::from_gguf(f, test::stacked_names(static_cast<std::uint32_t>(*layers)),
                                           static_cast<std::uint32_t>(*experts),
                                           static_cast<std::int64_t>(*embd),
                                           static_cast<std::int64_t>(*ff));
    ASSERT_TRUE(layout) << layout.error().message;
    resident_expert_source source(f, *layout);
    const std::uint32_t last_layer = static_cast<std::uint32_t>(*layers) - 1;
    const std::uint32_t last_expert = static_cast<std::uint32_t>(*experts) - 1;
    auto h = source.acquire(ExpertId{last_layer, last_expert}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    const gguf_tensor_info* down =
        *f.get_tensor(fmt::format("blk.{}.ffn_down_exps.weight", last_layer));
    // The last expert's down matrix ends exactly where the stacked tensor ends.
    const auto* p = static_cast<const std::byte*>(h->weights().down.data);
    EXPECT_EQ(p + layout->layers[last_layer].down_bytes, f.tensor_data(*down) + down->size_bytes);
    EXPECT_EQ(h->weights().down.row_bytes * h->weights().down.rows,
              layout->layers[last_layer].down_bytes);
}

}  // namespace
}  // namespace moed::storage
