// GGUF reader and writer.
//
// What it checks, and how:
// - Round trips: the writer serialises every metadata value type (scalars, strings, arrays,
//   arrays nested several levels) and tensors of several storage types, for GGUF v2 and v3
//   and for the default and a non-default alignment; the reader returns the same values,
//   shapes and bytes, and the layout is the one llama.cpp expects (data section and every
//   tensor aligned, tensors padded to the alignment).
// - The bundled model (models/tinymoe-qwen3moe-Q4_K_M.gguf): known facts (tensor count,
//   architecture, block count, tensor types and shapes, vocabulary size, aligned offsets),
//   and a differential check: re-writing its metadata and tensors with our writer gives the
//   original file byte for byte, so the writer lays files out as llama.cpp's tools do.
// - A corpus of broken files: a small valid file made by the writer, then one byte patch per
//   fault (located by searching for the key or tensor name in the image). Each test asserts
//   the error code and that the message names the file, the field and the byte offset where
//   that field sits.
// - Truncation: the small file cut at every byte of its header and at a sampling of
//   positions into the tensor data, and the bundled model cut at a sampling of positions;
//   each must give a clean bad_file error (run under ASan/UBSan, so an out-of-bounds read
//   or overflow would fail the test too). Random byte flips in the header must never crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <functional>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <type_traits>
#include <variant>

#include <fmt/format.h>

#include "storage/gguf.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

using bytes_t = std::vector<std::byte>;

std::string model_path() { return moed::test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

std::string temp_path(std::string_view name) {
    return (moed::test::temp_dir() / std::string(name)).string();
}

void write_file(const std::string& path, const bytes_t& bytes, std::size_t size) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(size));
    ASSERT_TRUE(out.good()) << path;
}

bytes_t read_whole(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes_t out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

result<std::unique_ptr<gguf_file>> open_bytes(const std::string& path, const bytes_t& bytes,
                                              const gguf_limits& limits = {}) {
    write_file(path, bytes, bytes.size());
    return gguf_file::open(path, limits);
}

bytes_t fill_bytes(std::size_t n, std::uint8_t seed) {
    bytes_t out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
    return out;
}

template <typename T>
void patch(bytes_t& bytes, std::size_t pos, T value) {
    ASSERT_LE(pos + sizeof(T), bytes.size());
    std::memcpy(bytes.data() + pos, &value, sizeof(T));
}

template <typename T>
T peek(const bytes_t& bytes, std::size_t pos) {
    T value{};
    std::memcpy(&value, bytes.data() + pos, sizeof(T));
    return value;
}

// Position of the first occurrence of `s` in the image (a key or a tensor name).
std::size_t find_text(const bytes_t& bytes, std::string_view s) {
    const auto* begin = reinterpret_cast<const char*>(bytes.data());
    const std::string_view all(begin, bytes.size());
    const std::size_t pos = all.find(s);
    EXPECT_NE(pos, std::string_view::npos) << s;
    return pos;
}

// Field positions of a metadata entry: its key length, the key, the type, the value.
struct kv_at {
    std::size_t key_len, key, type, value;
};
kv_at locate_kv(const bytes_t& bytes, std::string_view key) {
    const std::size_t k = find_text(bytes, key);
    return {k - 8, k, k + key.size(), k + key.size() + 4};
}

// Field positions of a tensor info: name, n_dims, ne[0], type, offset.
struct tensor_at {
    std::size_t name_len, name, n_dims, ne0, type, offset;
};
tensor_at locate_tensor(const bytes_t& bytes, std::string_view name) {
    const std::size_t n = find_text(bytes, name);
    const std::size_t n_dims_pos = n + name.size();
    const auto n_dims = peek<std::uint32_t>(bytes, n_dims_pos);
    const std::size_t ne0 = n_dims_pos + 4;
    const std::size_t type = ne0 + 8 * n_dims;
    return {n - 8, n, n_dims_pos, ne0, type, type + 4};
}

// Asserts that `r` failed with `code`, and that the message names the file, contains every
// one of `needles`, and gives the byte offset `at` (when set).
template <typename T>
void expect_fault(const result<T>& r, errc code, const std::string& path,
                  std::initializer_list<std::string_view> needles,
                  std::optional<std::uint64_t> at = std::nullopt) {
    ASSERT_FALSE(r.has_value()) << "expected an error for " << path;
    const moed::error& e = r.error();
    EXPECT_EQ(e.code, code) << e.message;
    EXPECT_NE(e.message.find(path), std::string::npos) << "message lacks the path: " << e.message;
    for (std::string_view n : needles) {
        EXPECT_NE(e.message.find(n), std::string::npos)
            << "message lacks '" << n << "': " << e.message;
    }
    if (at) {
        const std::string where = fmt::format("at byte {}:", *at);
        EXPECT_NE(e.message.find(where), std::string::npos)
            << "message lacks '" << where << "': " << e.message;
    }
}

// ---------------------------------------------------------------------------------------
// Values for the round trip.

gguf_value u(gguf_value_type t, std::uint64_t v) { return {t, v}; }
gguf_value i(gguf_value_type t, std::int64_t v) { return {t, v}; }
gguf_value str(std::string s) { return {gguf_value_type::string, std::move(s)}; }
gguf_value arr(gguf_value_type elem, std::vector<gguf_value> values) {
    return {gguf_value_type::array, gguf_array{elem, std::move(values)}};
}

// An array nested `levels` deep (levels == 1: an array of u8).
gguf_value nested(int levels) {
    if (levels == 1) return arr(gguf_value_type::u8, {u(gguf_value_type::u8, 7)});
    return arr(gguf_value_type::array, {nested(levels - 1)});
}

bool same_value(const gguf_value& a, const gguf_value& b) {
    if (a.type != b.type || a.data.index() != b.data.index()) return false;
    if (const auto* x = std::get_if<gguf_array>(&a.data)) {
        const auto& y = std::get<gguf_array>(b.data);
        if (x->element_type != y.element_type || x->values.size() != y.values.size()) return false;
        for (std::size_t k = 0; k < x->values.size(); ++k) {
            if (!same_value(x->values[k], y.values[k])) return false;
        }
        return true;
    }
    return std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, gguf_array>) {
                return false;  // handled above
            } else {
                return x == std::get<T>(b.data);
            }
        },
        a.data);
}

std::vector<std::pair<std::string, gguf_value>> every_value_type() {
    using t = gguf_value_type;
    return {
        {"v.u8", u(t::u8, 255)},
        {"v.i8", i(t::i8, -128)},
        {"v.u16", u(t::u16, 65535)},
        {"v.i16", i(t::i16, -32768)},
        {"v.u32", u(t::u32, 4294967295u)},
        {"v.i32", i(t::i32, -2147483647 - 1)},
        {"v.f32", {t::f32, 1.5}},
        {"v.bool_true", {t::boolean, true}},
        {"v.bool_false", {t::boolean, false}},
        {"v.string", str("h\xc3\xa9llo, world")},
        {"v.empty_string", str("")},
        {"v.u64", u(t::u64, std::numeric_limits<std::uint64_t>::max())},
        {"v.i64", i(t::i64, std::numeric_limits<std::int64_t>::min())},
        {"v.f64", {t::f64, -0.1}},
        {"v.arr_u8", arr(t::u8, {u(t::u8, 0), u(t::u8, 1), u(t::u8, 200)})},
        {"v.arr_i16", arr(t::i16, {i(t::i16, -3), i(t::i16, 3)})},
        {"v.arr_u64", arr(t::u64, {u(t::u64, 1ull << 40)})},
        {"v.arr_f64", arr(t::f64, {{t::f64, 2.25}, {t::f64, -1e300}})},
        {"v.arr_bool", arr(t::boolean, {{t::boolean, true}, {t::boolean, false}})},
        {"v.arr_string", arr(t::string, {str("a"), str(""), str("ccc")})},
        {"v.arr_empty", arr(t::i32, {})},
        {"v.arr_nested",
         arr(t::array, {arr(t::string, {str("x"), str("yy")}), arr(t::u32, {u(t::u32, 9)}),
                        arr(t::array, {arr(t::f32, {{t::f32, 0.25}})})})},
        {"v.arr_deep", nested(8)},
    };
}

// ---------------------------------------------------------------------------------------
// Round trips

class gguf_round_trip : public ::testing::TestWithParam<std::tuple<std::uint32_t, std::uint64_t>> {};

TEST_P(gguf_round_trip, every_value_type_and_tensors) {
    const auto [version, alignment] = GetParam();
    gguf_writer w(version, alignment);
    const auto values = every_value_type();
    for (const auto& [k, v] : values) w.set(k, v);
    w.set_u32("h.u32", 42);
    w.set_u64("h.u64", 1ull << 50);
    w.set_i32("h.i32", -42);
    w.set_f32("h.f32", 0.5f);
    w.set_bool("h.bool", true);
    w.set_string("h.string", "text");
    w.set_string_array("h.strings", {"<s>", "</s>", "hello"});
    w.set_i32_array("h.i32s", {-1, 0, 1});
    w.set_f32_array("h.f32s", {0.125f, -2.0f});

    const bytes_t f32_data = fill_bytes(4 * 3 * 5, 1);        // 60 bytes: not aligned, padded
    const bytes_t q8_data = fill_bytes(34 * 2 * 2 * 2, 2);    // {64, 2, 2}: 4 rows of 2 blocks
    const bytes_t q4k_data = fill_bytes(144, 3);
    const bytes_t f16_data = fill_bytes(2 * 2 * 1 * 3 * 2, 4);
    w.add_tensor("t.f32", tensor_type::f32, {3, 5}, f32_data);
    w.add_tensor("t.q8_0", tensor_type::q8_0, {64, 2, 2}, q8_data);
    w.add_tensor("t.q4_k", tensor_type::q4_k, {256}, q4k_data);
    w.add_tensor("t.f16", tensor_type::f16, {2, 1, 3, 2}, f16_data);

    const std::string path = temp_path(fmt::format("round_trip_v{}_a{}.gguf", version, alignment));
    ASSERT_TRUE(w.write(path));
    auto file = gguf_file::open(path);
    ASSERT_TRUE(file) << file.error().message;
    const gguf_file& f = **file;
    EXPECT_EQ(f.version(), version);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    EXPECT_EQ(f.file_size(), w.serialize().size());

    for (const auto& [k, v] : values) {
        const gguf_value* got = f.find(k);
        ASSERT_NE(got, nullptr) << k;
        EXPECT_TRUE(same_value(*got, v)) << k;
    }
    // Metadata keeps file order: the first keys are ours, in insertion order.
    ASSERT_GE(f.metadata().size(), values.size());
    for (std::size_t k = 0; k < values.size(); ++k) EXPECT_EQ(f.metadata()[k].first, values[k].first);

    EXPECT_EQ(*f.get_uint("h.u32"), 42u);
    EXPECT_EQ(*f.get_uint("h.u64"), 1ull << 50);
    EXPECT_EQ(*f.get_int("h.i32"), -42);
    EXPECT_EQ(*f.get_float("h.f32"), 0.5);
    EXPECT_EQ(*f.get_bool("h.bool"), true);
    EXPECT_EQ(*f.get_string("h.string"), "text");
    const gguf_array* strings = *f.get_array("h.strings");
    ASSERT_EQ(strings->values.size(), 3u);
    EXPECT_EQ(*strings->values[2].as_string("h.strings[2]"), "hello");
    const gguf_array* i32s = *f.get_array("h.i32s");
    EXPECT_EQ(*i32s->values[0].as_int("h.i32s[0]"), -1);
    const gguf_array* f32s = *f.get_array("h.f32s");
    EXPECT_EQ(*f32s->values[1].as_float("h.f32s[1]"), -2.0);
    // The integer getters accept any integer type whose value fits.
    EXPECT_EQ(*f.get_uint("v.u8"), 255u);
    EXPECT_EQ(*f.get_int("v.u16"), 65535);
    auto negative = f.get_uint("v.i32");
    ASSERT_FALSE(negative);
    EXPECT_EQ(negative.error().code, errc::bad_file);
    EXPECT_NE(negative.error().message.find("-2147483648"), std::string::npos);
    auto too_big = f.get_int("v.u64");
    ASSERT_FALSE(too_big);
    EXPECT_EQ(too_big.error().code, errc::bad_file);
    EXPECT_NE(too_big.error().message.find("does not fit an i64"), std::string::npos);
    EXPECT_NE(too_big.error().message.find(path), std::string::npos);
    auto not_bool = f.get_bool("v.u8");
    ASSERT_FALSE(not_bool);
    EXPECT_NE(not_bool.error().message.find("'v.u8' has type u8, expected bool"), std::string::npos);

    struct expected_tensor {
        const char* name;
        tensor_type type;
        int n_dims;
        std::int64_t ne[4];
        const bytes_t* data;
    };
    const expected_tensor expected[] = {
        {"t.f32", tensor_type::f32, 2, {3, 5, 1, 1}, &f32_data},
        {"t.q8_0", tensor_type::q8_0, 3, {64, 2, 2, 1}, &q8_data},
        {"t.q4_k", tensor_type::q4_k, 1, {256, 1, 1, 1}, &q4k_data},
        {"t.f16", tensor_type::f16, 4, {2, 1, 3, 2}, &f16_data},
    };
    ASSERT_EQ(f.tensors().size(), 4u);
    std::uint64_t next_offset = f.data_offset();
    for (std::size_t k = 0; k < 4; ++k) {
        const expected_tensor& e = expected[k];
        const gguf_tensor_info& t = f.tensors()[k];
        EXPECT_EQ(t.name, e.name);
        EXPECT_EQ(t.type, e.type) << e.name;
        EXPECT_EQ(t.n_dims, e.n_dims) << e.name;
        for (int d = 0; d < 4; ++d) EXPECT_EQ(t.ne[d], e.ne[d]) << e.name << " ne[" << d << "]";
        EXPECT_EQ(t.size_bytes, e.data->size()) << e.name;
        // llama.cpp's layout: each tensor starts where the previous one's padded data ends.
        EXPECT_EQ(t.offset, next_offset) << e.name;
        EXPECT_EQ(t.offset % alignment, 0u) << e.name;
        next_offset += (t.size_bytes + alignment - 1) / alignment * alignment;
        EXPECT_EQ(std::memcmp(f.tensor_data(t), e.data->data(), e.data->size()), 0) << e.name;
        EXPECT_EQ(f.find_tensor(e.name), &t);
    }
    EXPECT_EQ(next_offset, f.file_size());  // the last tensor is padded too
}

INSTANTIATE_TEST_SUITE_P(versions_and_alignments, gguf_round_trip,
                         ::testing::Combine(::testing::Values(2u, 3u),
                                            ::testing::Values(32u, 64u, 1u)));

TEST(gguf_writer, write_to_bad_path_is_io_error) {
    gguf_writer w;
    const std::string path = temp_path("no-such-dir/x.gguf");
    auto r = w.write(path);
    expect_fault(r, errc::io, path, {"cannot create"});
}

TEST(gguf_writer, empty_file_round_trips) {
    gguf_writer w(2);
    const std::string path = temp_path("empty.gguf");
    auto f = open_bytes(path, w.serialize());
    ASSERT_TRUE(f) << f.error().message;
    EXPECT_TRUE((*f)->metadata().empty());
    EXPECT_TRUE((*f)->tensors().empty());
}

// ---------------------------------------------------------------------------------------
// The bundled model

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
    EXPECT_EQ((*emb)->n_dims, 2);
    EXPECT_EQ((*emb)->ne[0], 256);
    EXPECT_EQ((*emb)->ne[1], 4096);
    EXPECT_EQ((*emb)->size_bytes, 4096u * 144u);
    auto out = f.get_tensor("output.weight");
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_EQ((*out)->type, tensor_type::q6_k);
    auto tokens = f.get_array("tokenizer.ggml.tokens");
    ASSERT_TRUE(tokens) << tokens.error().message;
    EXPECT_EQ((*tokens)->element_type, gguf_value_type::string);
    EXPECT_EQ((*tokens)->values.size(), 4096u);
    EXPECT_EQ(f.data_offset() % f.alignment(), 0u);
    for (const auto& t : f.tensors()) {
        EXPECT_EQ(t.offset % f.alignment(), 0u) << t.name;
        EXPECT_GE(t.offset, f.data_offset()) << t.name;
        EXPECT_LE(t.offset + t.size_bytes, f.file_size()) << t.name;
    }
    // The stacked experts of a layer: ne = {n_embd, n_ff, n_expert}.
    auto gate = f.get_tensor("blk.0.ffn_gate_exps.weight");
    ASSERT_TRUE(gate) << gate.error().message;
    EXPECT_EQ((*gate)->n_dims, 3);
}

TEST(gguf_model, missing_keys_and_wrong_types_are_named) {
    auto file = gguf_file::open(model_path());
    ASSERT_TRUE(file) << file.error().message;
    const gguf_file& f = **file;
    const std::string path = model_path();

    expect_fault(f.get_uint("qwen3moe.no_such_key"), errc::not_found, path,
                 {"missing required key 'qwen3moe.no_such_key'"});
    expect_fault(f.get_string("no.such"), errc::not_found, path, {"'no.such'"});
    expect_fault(f.get_float("no.such"), errc::not_found, path, {"'no.such'"});
    expect_fault(f.get_array("no.such"), errc::not_found, path, {"'no.such'"});
    expect_fault(f.get_uint("general.architecture"), errc::bad_file, path,
                 {"'general.architecture'", "string", "unsigned integer"});
    expect_fault(f.get_string("qwen3moe.block_count"), errc::bad_file, path,
                 {"'qwen3moe.block_count'", "u32", "expected string"});
    expect_fault(f.get_array("general.architecture"), errc::bad_file, path,
                 {"'general.architecture'", "string", "array"});
    expect_fault(f.get_float("qwen3moe.block_count"), errc::bad_file, path,
                 {"'qwen3moe.block_count'", "u32", "f32"});
    expect_fault(f.get_tensor("blk.99.attn_q.weight"), errc::not_found, path,
                 {"tensor 'blk.99.attn_q.weight'"});
    EXPECT_EQ(f.find("no.such"), nullptr);
    EXPECT_EQ(f.find_tensor("no.such"), nullptr);
}

// Re-writing the bundled model (made by llama.cpp's tools) with our writer must give the
// same bytes: the same header encoding, padding and tensor layout.
TEST(gguf_model, writer_reproduces_bundled_model_bytes) {
    auto file = gguf_file::open(model_path());
    ASSERT_TRUE(file) << file.error().message;
    const gguf_file& f = **file;
    gguf_writer w(f.version(), f.alignment());
    for (const auto& [k, v] : f.metadata()) w.set(k, v);
    for (const auto& t : f.tensors()) {
        const std::byte* p = f.tensor_data(t);
        w.add_tensor(t.name, t.type, std::vector<std::int64_t>(t.ne, t.ne + t.n_dims),
                     bytes_t(p, p + t.size_bytes));
    }
    const bytes_t image = w.serialize();
    const auto original = f.mapping();
    ASSERT_EQ(image.size(), original.size());
    std::size_t first_diff = image.size();
    for (std::size_t k = 0; k < image.size(); ++k) {
        if (image[k] != original[k]) {
            first_diff = k;
            break;
        }
    }
    EXPECT_EQ(first_diff, image.size()) << "first differing byte";

    // write() streams header and tensors instead of building the image: same bytes.
    const std::string path = (moed::test::temp_dir() / "rewritten.gguf").string();
    ASSERT_TRUE(w.write(path));
    std::ifstream in(path, std::ios::binary);
    const std::string streamed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_EQ(streamed.size(), image.size());
    EXPECT_EQ(0, std::memcmp(streamed.data(), image.data(), image.size()));
}

// ---------------------------------------------------------------------------------------
// The fault corpus: a small valid file, then one patch per fault.

gguf_writer base_writer(std::uint32_t version = 3) {
    gguf_writer w(version);
    w.set_string("general.architecture", "corpus");
    w.set_string("general.name", "fault corpus");
    w.set_u32("test.count", 7);
    w.set_bool("test.flag", true);
    w.set_u32("test.key1", 1);
    w.set_u32("test.key2", 2);
    w.set_string_array("test.tokens", {"a", "bb", "ccc"});
    w.add_tensor("a.weight", tensor_type::f32, {8, 2}, fill_bytes(64, 1));      // 64 bytes
    w.add_tensor("b.weight", tensor_type::q8_0, {32, 2}, fill_bytes(68, 2));    // 68 -> 96
    w.add_tensor("c.weight", tensor_type::f32, {4}, fill_bytes(16, 3));         // 16 -> 32
    return w;
}

TEST(gguf_corpus, base_file_is_valid) {
    const std::string path = temp_path("base.gguf");
    auto f = open_bytes(path, base_writer().serialize());
    ASSERT_TRUE(f) << f.error().message;
    EXPECT_EQ((*f)->tensors().size(), 3u);
    EXPECT_EQ((*f)->metadata().size(), 7u);
}

TEST(gguf_corpus, missing_file_is_not_found) {
    const std::string path = temp_path("does-not-exist.gguf");
    expect_fault(gguf_file::open(path), errc::not_found, path, {"cannot open"});
}

TEST(gguf_corpus, directory_is_rejected) {
    const std::string path = moed::test::temp_dir().string();
    expect_fault(gguf_file::open(path), errc::bad_file, path, {"not a regular file"});
}

TEST(gguf_corpus, empty_file) {
    const std::string path = temp_path("empty-bytes.gguf");
    expect_fault(open_bytes(path, {}), errc::bad_file, path, {"magic", "empty"}, 0);
}

TEST(gguf_corpus, bad_magic) {
    bytes_t b = base_writer().serialize();
    b[0] = std::byte{'F'};
    b[3] = std::byte{0x01};
    const std::string path = temp_path("bad-magic.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"magic", "FGU\\x01"}, 0);
}

TEST(gguf_corpus, version_1_is_unsupported) {
    bytes_t b = base_writer().serialize();
    patch<std::uint32_t>(b, 4, 1);
    const std::string path = temp_path("v1.gguf");
    expect_fault(open_bytes(path, b), errc::unsupported, path, {"version", "1 is not supported"}, 4);
}

TEST(gguf_corpus, future_and_byte_swapped_versions_are_unsupported) {
    bytes_t b = base_writer().serialize();
    const std::string path = temp_path("v4.gguf");
    patch<std::uint32_t>(b, 4, 4);
    expect_fault(open_bytes(path, b), errc::unsupported, path, {"version", "4 is not supported"}, 4);
    patch<std::uint32_t>(b, 4, 0x03000000u);
    expect_fault(open_bytes(path, b), errc::unsupported, path, {"version", "big-endian"}, 4);
}

TEST(gguf_corpus, tensor_count_above_limit) {
    bytes_t b = base_writer().serialize();
    patch<std::uint64_t>(b, 8, 1ull << 40);
    const std::string path = temp_path("n-tensors.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"tensor count", "limit"}, 8);
}

TEST(gguf_corpus, tensor_count_beyond_file_size) {
    bytes_t b = base_writer().serialize();
    patch<std::uint64_t>(b, 8, 1000);  // under the limit, but 1000 infos need 32 kB
    const std::string path = temp_path("n-tensors-size.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"tensor count", "bytes left"}, 8);
}

TEST(gguf_corpus, kv_count_above_limit) {
    bytes_t b = base_writer().serialize();
    patch<std::uint64_t>(b, 16, ~0ull);
    const std::string path = temp_path("n-kv.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"metadata key count", "limit"}, 16);
}

TEST(gguf_corpus, kv_count_beyond_file_size) {
    bytes_t b = base_writer().serialize();
    patch<std::uint64_t>(b, 16, 100000);
    const std::string path = temp_path("n-kv-size.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key count", "bytes left"}, 16);
}

TEST(gguf_corpus, counts_checked_against_configured_limits) {
    const std::string path = temp_path("limits.gguf");
    const bytes_t b = base_writer().serialize();
    gguf_limits few_tensors;
    few_tensors.max_tensors = 2;
    expect_fault(open_bytes(path, b, few_tensors), errc::bad_file, path,
                 {"tensor count", "3 exceeds the limit of 2"}, 8);
    gguf_limits few_kv;
    few_kv.max_kv = 6;
    expect_fault(open_bytes(path, b, few_kv), errc::bad_file, path,
                 {"metadata key count", "7 exceeds the limit of 6"}, 16);
    gguf_limits short_strings;
    short_strings.max_string_bytes = 19;  // "general.architecture" is 20
    expect_fault(open_bytes(path, b, short_strings), errc::bad_file, path,
                 {"metadata key #0 key length", "20 bytes exceeds the limit of 19"}, 24);
    gguf_limits short_arrays;
    short_arrays.max_array_elems = 2;
    expect_fault(open_bytes(path, b, short_arrays), errc::bad_file, path,
                 {"'test.tokens' array count", "3 elements exceeds the limit of 2"},
                 locate_kv(b, "test.tokens").value + 4);
}

TEST(gguf_corpus, key_length_beyond_file) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.count");
    patch<std::uint64_t>(b, kv.key_len, 1u << 20);  // under the limit, past the end
    const std::string path = temp_path("key-len.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #2 key length", "bytes are left"}, kv.key_len);
}

TEST(gguf_corpus, key_length_above_limit) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "general.architecture");
    patch<std::uint64_t>(b, kv.key_len, ~0ull);
    const std::string path = temp_path("key-len-limit.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #0 key length", "exceeds the limit"}, kv.key_len);
}

TEST(gguf_corpus, string_value_length_beyond_file) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "general.name");
    patch<std::uint64_t>(b, kv.value, 1u << 20);
    const std::string path = temp_path("string-len.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #1 'general.name' string length", "bytes are left"}, kv.value);
}

TEST(gguf_corpus, string_value_length_above_limit) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "general.name");
    patch<std::uint64_t>(b, kv.value, 1ull << 62);
    const std::string path = temp_path("string-len-limit.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #1 'general.name' string length", "exceeds the limit"}, kv.value);
}

TEST(gguf_corpus, array_element_string_length_beyond_file) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.tokens");
    const std::size_t second = kv.value + 4 + 8 + 8 + 1;  // after type, count, "a"
    ASSERT_EQ(peek<std::uint64_t>(b, second), 2u);
    patch<std::uint64_t>(b, second, 1u << 24);
    const std::string path = temp_path("array-string-len.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #6 'test.tokens'[1] string length"}, second);
}

TEST(gguf_corpus, array_count_above_limit) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.tokens");
    patch<std::uint64_t>(b, kv.value + 4, 1ull << 40);
    const std::string path = temp_path("array-count.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"'test.tokens' array count", "exceeds the limit"}, kv.value + 4);
}

TEST(gguf_corpus, array_count_beyond_file) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.tokens");
    patch<std::uint64_t>(b, kv.value + 4, 1u << 20);
    const std::string path = temp_path("array-count-size.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"'test.tokens' array count", "bytes are left"}, kv.value + 4);
}

TEST(gguf_corpus, unknown_value_type) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.count");
    patch<std::uint32_t>(b, kv.type, 13);
    const std::string path = temp_path("value-type.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #2 'test.count' value type", "unknown value type 13"}, kv.type);
}

TEST(gguf_corpus, unknown_array_element_type) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.tokens");
    patch<std::uint32_t>(b, kv.value, 0xdeadbeef);
    const std::string path = temp_path("array-type.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"'test.tokens' array element type", "unknown value type 3735928559"}, kv.value);
}

TEST(gguf_corpus, bool_other_than_0_or_1) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.flag");
    patch<std::uint8_t>(b, kv.value, 2);
    const std::string path = temp_path("bool.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"'test.flag' value", "bool"}, kv.value);
}

TEST(gguf_corpus, arrays_nested_deeper_than_limit) {
    const std::string path = temp_path("nested.gguf");
    gguf_writer ok;
    ok.set("deep", nested(8));
    auto f = open_bytes(path, ok.serialize());
    ASSERT_TRUE(f) << f.error().message;

    gguf_writer w;
    w.set("deep", nested(9));
    const bytes_t b = w.serialize();
    // The ninth array's header: magic..n_kv (24), key (8 + 4), type (4), then 8 array
    // headers of 12 bytes each.
    const std::uint64_t ninth = 24 + 12 + 4 + 8 * 12;
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"'deep'[0][0][0][0][0][0][0][0] array", "nested deeper than the limit of 8"},
                 ninth);
    gguf_limits shallow;
    shallow.max_array_depth = 1;
    expect_fault(open_bytes(path, ok.serialize(), shallow), errc::bad_file, path,
                 {"'deep'[0] array", "limit of 1"}, 24 + 12 + 4 + 12);
}

TEST(gguf_corpus, duplicate_key) {
    bytes_t b = base_writer().serialize();
    const kv_at kv = locate_kv(b, "test.key2");
    b[kv.key + 8] = std::byte{'1'};
    const std::string path = temp_path("dup-key.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"metadata key #5 'test.key1' key", "duplicate key"}, kv.key_len);
}

TEST(gguf_corpus, alignment_not_power_of_two) {
    gguf_writer w = base_writer();
    w.set_u32("general.alignment", 48);
    const bytes_t b = w.serialize();
    const kv_at kv = locate_kv(b, "general.alignment");
    const std::string path = temp_path("align-48.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"'general.alignment' value", "48 is not a power of two"}, kv.value);
    w.set_u32("general.alignment", 0);
    expect_fault(open_bytes(path, w.serialize()), errc::bad_file, path,
                 {"'general.alignment' value", "0 is not a power of two"}, kv.value);
}

TEST(gguf_corpus, alignment_of_wrong_type) {
    gguf_writer w = base_writer();
    w.set_u64("general.alignment", 32);
    const bytes_t b = w.serialize();
    const kv_at kv = locate_kv(b, "general.alignment");
    const std::string path = temp_path("align-u64.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"'general.alignment' value type", "u64, expected u32"}, kv.type);
}

TEST(gguf_corpus, tensor_name_length_beyond_file) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "b.weight");
    patch<std::uint64_t>(b, t.name_len, 1u << 22);
    const std::string path = temp_path("tensor-name-len.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"tensor #1 name length"}, t.name_len);
}

TEST(gguf_corpus, duplicate_tensor_name) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "b.weight");
    b[t.name] = std::byte{'a'};
    const std::string path = temp_path("dup-tensor.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'a.weight' name", "duplicate tensor name"}, t.name_len);
}

TEST(gguf_corpus, zero_dims) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "a.weight");
    patch<std::uint32_t>(b, t.n_dims, 0);
    const std::string path = temp_path("n-dims-0.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'a.weight' n_dims", "0 dimensions"}, t.n_dims);
}

TEST(gguf_corpus, too_many_dims) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "c.weight");
    patch<std::uint32_t>(b, t.n_dims, 5);
    const std::string path = temp_path("n-dims-5.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'c.weight' n_dims", "5 dimensions"}, t.n_dims);
}

TEST(gguf_corpus, zero_dimension) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "a.weight");
    patch<std::int64_t>(b, t.ne0 + 8, 0);
    const std::string path = temp_path("ne-0.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'a.weight' ne[1]", "0 is not positive"}, t.ne0 + 8);
}

TEST(gguf_corpus, negative_dimension) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "a.weight");
    patch<std::int64_t>(b, t.ne0, -8);
    const std::string path = temp_path("ne-negative.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'a.weight' ne[0]", "-8 is not positive"}, t.ne0);
}

TEST(gguf_corpus, element_count_overflow) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "a.weight");
    patch<std::int64_t>(b, t.ne0, 1ll << 32);
    patch<std::int64_t>(b, t.ne0 + 8, 1ll << 31);
    const std::string path = temp_path("ne-overflow.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'a.weight' ne[1]", "overflow"}, t.ne0 + 8);
}

TEST(gguf_corpus, byte_size_overflow) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "a.weight");  // F32: 4 bytes a value
    patch<std::int64_t>(b, t.ne0, 1ll << 31);
    patch<std::int64_t>(b, t.ne0 + 8, 1ll << 31);
    const std::string path = temp_path("size-overflow.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'a.weight' type", "byte size overflows"}, t.type);
}

TEST(gguf_corpus, unknown_tensor_type) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "c.weight");
    const std::string path = temp_path("tensor-type.gguf");
    for (std::uint32_t bad : {4u, 5u, 31u, 40u, 1000u}) {
        patch<std::uint32_t>(b, t.type, bad);
        expect_fault(open_bytes(path, b), errc::bad_file, path,
                     {"tensor 'c.weight' type", fmt::format("unknown tensor type {}", bad)},
                     t.type);
    }
}

TEST(gguf_corpus, known_unsupported_tensor_type_is_read) {
    gguf_writer w;
    w.add_tensor("iq2.weight", tensor_type::iq2_xxs, {256, 2}, fill_bytes(2 * 66, 5));
    const std::string path = temp_path("iq2xxs.gguf");
    auto f = open_bytes(path, w.serialize());
    ASSERT_TRUE(f) << f.error().message;
    const gguf_tensor_info& t = (*f)->tensors()[0];
    EXPECT_EQ(t.type, tensor_type::iq2_xxs);
    EXPECT_EQ(t.size_bytes, 2u * 66u);
    EXPECT_EQ(type_name(t.type), "IQ2_XXS");
    EXPECT_FALSE(traits_of(static_cast<std::uint32_t>(t.type))->supported);
}

TEST(gguf_corpus, row_not_a_multiple_of_block) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "b.weight");  // Q8_0, blocks of 32
    patch<std::int64_t>(b, t.ne0, 33);
    const std::string path = temp_path("block.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'b.weight' ne[0]", "33 is not a multiple of the Q8_0 block of 32"}, t.ne0);
}

TEST(gguf_corpus, offset_not_aligned) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "c.weight");
    patch<std::uint64_t>(b, t.offset, peek<std::uint64_t>(b, t.offset) + 4);
    const std::string path = temp_path("offset-align.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'c.weight' offset", "not a multiple of the alignment 32"}, t.offset);
}

TEST(gguf_corpus, data_past_end_of_file) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "c.weight");
    const std::string path = temp_path("offset-eof.gguf");
    for (std::uint64_t bad : {std::uint64_t{1} << 20, ~std::uint64_t{31}, std::uint64_t{192}}) {
        patch<std::uint64_t>(b, t.offset, bad);
        expect_fault(open_bytes(path, b), errc::bad_file, path,
                     {"tensor 'c.weight' offset", "past the end of the file"}, t.offset);
    }
}

TEST(gguf_corpus, dimension_makes_data_past_end_of_file) {
    bytes_t b = base_writer().serialize();
    const tensor_at t = locate_tensor(b, "c.weight");
    patch<std::int64_t>(b, t.ne0, 1ll << 40);
    const std::string path = temp_path("ne-eof.gguf");
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'c.weight' offset", "past the end of the file"}, t.offset);
}

TEST(gguf_corpus, overlapping_tensors) {
    bytes_t b = base_writer().serialize();
    const tensor_at bt = locate_tensor(b, "b.weight");
    const std::string path = temp_path("overlap.gguf");
    patch<std::uint64_t>(b, bt.offset, 32);  // a.weight is [0, 64)
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'b.weight' offset", "overlaps tensor 'a.weight'"}, bt.offset);
    patch<std::uint64_t>(b, bt.offset, 0);  // the same start
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'b.weight' offset", "overlaps tensor 'a.weight'"}, bt.offset);
    // c.weight ([160, 176)) moved to the middle of b.weight ([64, 132)): reported at c.
    b = base_writer().serialize();
    const tensor_at ct = locate_tensor(b, "c.weight");
    patch<std::uint64_t>(b, ct.offset, 96);
    expect_fault(open_bytes(path, b), errc::bad_file, path,
                 {"tensor 'c.weight' offset", "overlaps tensor 'b.weight'"}, ct.offset);
}

TEST(gguf_corpus, same_faults_in_version_2) {
    bytes_t b = base_writer(2).serialize();
    const std::string path = temp_path("v2-fault.gguf");
    auto ok = open_bytes(path, b);
    ASSERT_TRUE(ok) << ok.error().message;
    EXPECT_EQ((*ok)->version(), 2u);
    const tensor_at t = locate_tensor(b, "a.weight");
    patch<std::uint32_t>(b, t.n_dims, 9);
    expect_fault(open_bytes(path, b), errc::bad_file, path, {"tensor 'a.weight' n_dims"}, t.n_dims);
}

// ---------------------------------------------------------------------------------------
// Truncation and random damage

// Every prefix of a file shorter than its last tensor's end must fail cleanly.
// The file is written once and cut shorter step by step, so a large model costs one write.
void check_truncations(const bytes_t& image, const std::string& path,
                       std::vector<std::size_t> cuts) {
    std::sort(cuts.begin(), cuts.end(), std::greater<>());
    write_file(path, image, image.size());
    for (std::size_t cut : cuts) {
        ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(cut)), 0) << path;
        auto r = gguf_file::open(path);
        ASSERT_FALSE(r.has_value()) << "a file cut at " << cut << " bytes was accepted";
        EXPECT_EQ(r.error().code, errc::bad_file) << cut << ": " << r.error().message;
        EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
        EXPECT_NE(r.error().message.find(" at byte "), std::string::npos) << r.error().message;
    }
}

TEST(gguf_truncation, every_header_byte_and_sampled_data) {
    gguf_writer w = base_writer();
    w.set("test.nested", arr(gguf_value_type::array, {arr(gguf_value_type::string, {str("n")})}));
    const bytes_t image = w.serialize();
    const std::string path = temp_path("truncated.gguf");
    auto whole = open_bytes(path, image);
    ASSERT_TRUE(whole) << whole.error().message;
    std::uint64_t data_end = 0;
    for (const auto& t : (*whole)->tensors()) data_end = std::max(data_end, t.offset + t.size_bytes);
    const std::uint64_t data_offset = (*whole)->data_offset();
    whole = unexpected(errc::internal, "closed");

    std::vector<std::size_t> cuts;
    for (std::size_t cut = 0; cut <= data_offset; ++cut) cuts.push_back(cut);
    for (std::size_t cut = data_offset + 1; cut < data_end; cut += 7) cuts.push_back(cut);
    cuts.push_back(data_end - 1);
    check_truncations(image, path, cuts);

    // A cut in the middle of a named field says so.
    const tensor_at t = locate_tensor(image, "b.weight");
    write_file(path, image, t.ne0 + 3);
    expect_fault(gguf_file::open(path), errc::bad_file, path,
                 {"tensor 'b.weight' ne[0]", "truncated"}, t.ne0);
}

TEST(gguf_truncation, bundled_model_sampled) {
    const bytes_t image = read_whole(model_path());
    ASSERT_GT(image.size(), 1000u);
    auto whole = gguf_file::open(model_path());
    ASSERT_TRUE(whole) << whole.error().message;
    std::uint64_t data_end = 0;
    for (const auto& t : (*whole)->tensors()) data_end = std::max(data_end, t.offset + t.size_bytes);
    const std::uint64_t data_offset = (*whole)->data_offset();

    std::vector<std::size_t> cuts;
    std::mt19937_64 rng(12345);
    for (std::size_t cut = 0; cut < 64; ++cut) cuts.push_back(cut);
    for (int k = 0; k < 60; ++k) cuts.push_back(rng() % (data_offset + 1));
    for (int k = 0; k < 20; ++k) cuts.push_back(data_offset + rng() % (data_end - data_offset));
    cuts.push_back(data_offset);
    cuts.push_back(data_end - 1);
    check_truncations(image, temp_path("model-truncated.gguf"), cuts);
}

// Random bytes flipped in the header: the reader may accept or reject the result, but never
// crashes, reads out of bounds (ASan) or lets an exception escape.
TEST(gguf_truncation, random_header_damage_never_crashes) {
    gguf_writer w = base_writer();
    w.set("test.nested", arr(gguf_value_type::array, {arr(gguf_value_type::i16, {i(gguf_value_type::i16, 1)})}));
    const bytes_t image = w.serialize();
    const std::string path = temp_path("damaged.gguf");
    auto whole = open_bytes(path, image);
    ASSERT_TRUE(whole);
    const std::uint64_t header_end = (*whole)->data_offset();
    std::mt19937_64 rng(777);
    int rejected = 0;
    for (int iter = 0; iter < 600; ++iter) {
        bytes_t b = image;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < flips; ++k) {
            const std::size_t pos = rng() % header_end;
            b[pos] = static_cast<std::byte>(rng() & 0xff);
        }
        auto r = open_bytes(path, b);
        if (!r) {
            ++rejected;
            EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
        } else {
            // Whatever was accepted is internally consistent.
            for (const auto& t : (*r)->tensors()) {
                EXPECT_LE(t.offset + t.size_bytes, (*r)->file_size());
                EXPECT_EQ(t.offset % (*r)->alignment(), 0u);
            }
        }
    }
    EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace moed::storage
