// Storage types of tensor data, numbered as GGUF numbers them (they go to disk, so the
// underlying type is fixed). Only the types moed computes with have block geometry here;
// the others are known by name so a reader can say which unsupported type it met.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moed {

enum class tensor_type : std::uint32_t {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q8_1 = 9,
    q2_k = 10,
    q3_k = 11,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    q8_k = 15,
    iq2_xxs = 16,
    iq2_xs = 17,
    iq3_xxs = 18,
    iq1_s = 19,
    iq4_nl = 20,
    iq3_s = 21,
    iq2_s = 22,
    iq4_xs = 23,
    i8 = 24,
    i16 = 25,
    i32 = 26,
    i64 = 27,
    f64 = 28,
    iq1_m = 29,
    bf16 = 30,
    tq1_0 = 34,
    tq2_0 = 35,
    mxfp4 = 39,
};

// Geometry of a storage type: `block_elems` values are stored in `block_bytes` bytes.
struct type_traits {
    std::string_view name;
    std::uint32_t block_elems = 0;
    std::uint32_t block_bytes = 0;
    bool supported = false;  // moed has kernels for it
};

// Returns nullopt for a number that names no type at all.
std::optional<type_traits> traits_of(std::uint32_t raw_type) noexcept;
std::string_view type_name(tensor_type type) noexcept;

// Bytes of a row of `elems` values; requires elems % block_elems == 0 and a supported type.
std::size_t row_bytes(tensor_type type, std::int64_t elems) noexcept;

}  // namespace moed
