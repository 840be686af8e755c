#include "common/tensor_type.h"

#include "common/assert.h"

namespace moed {

std::optional<type_traits> traits_of(std::uint32_t raw_type) noexcept {
    // Block geometry as llama.cpp's ggml defines it (QK_K = 256).
    switch (static_cast<tensor_type>(raw_type)) {
        case tensor_type::f32: return type_traits{"F32", 1, 4, true};
        case tensor_type::f16: return type_traits{"F16", 1, 2, true};
        case tensor_type::bf16: return type_traits{"BF16", 1, 2, true};
        case tensor_type::q8_0: return type_traits{"Q8_0", 32, 34, true};
        case tensor_type::q4_k: return type_traits{"Q4_K", 256, 144, true};
        case tensor_type::q6_k: return type_traits{"Q6_K", 256, 210, true};
        case tensor_type::q8_k: return type_traits{"Q8_K", 256, 292, true};
        case tensor_type::q4_0: return type_traits{"Q4_0", 32, 18, true};
        case tensor_type::q4_1: return type_traits{"Q4_1", 32, 20, true};
        case tensor_type::q5_0: return type_traits{"Q5_0", 32, 22, true};
        case tensor_type::q5_1: return type_traits{"Q5_1", 32, 24, true};
        case tensor_type::q8_1: return type_traits{"Q8_1", 32, 36, true};
        case tensor_type::q2_k: return type_traits{"Q2_K", 256, 84, true};
        case tensor_type::q3_k: return type_traits{"Q3_K", 256, 110, true};
        case tensor_type::q5_k: return type_traits{"Q5_K", 256, 176, true};
        case tensor_type::iq2_xxs: return type_traits{"IQ2_XXS", 256, 66, false};
        case tensor_type::iq2_xs: return type_traits{"IQ2_XS", 256, 74, false};
        case tensor_type::iq3_xxs: return type_traits{"IQ3_XXS", 256, 98, false};
        case tensor_type::iq1_s: return type_traits{"IQ1_S", 256, 50, false};
        case tensor_type::iq4_nl: return type_traits{"IQ4_NL", 32, 18, true};
        case tensor_type::iq3_s: return type_traits{"IQ3_S", 256, 110, false};
        case tensor_type::iq2_s: return type_traits{"IQ2_S", 256, 82, false};
        case tensor_type::iq4_xs: return type_traits{"IQ4_XS", 256, 136, true};
        case tensor_type::i8: return type_traits{"I8", 1, 1, false};
        case tensor_type::i16: return type_traits{"I16", 1, 2, false};
        case tensor_type::i32: return type_traits{"I32", 1, 4, false};
        case tensor_type::i64: return type_traits{"I64", 1, 8, false};
        case tensor_type::f64: return type_traits{"F64", 1, 8, false};
        case tensor_type::iq1_m: return type_traits{"IQ1_M", 256, 56, false};
        case tensor_type::tq1_0: return type_traits{"TQ1_0", 256, 54, false};
        case tensor_type::tq2_0: return type_traits{"TQ2_0", 256, 66, false};
        case tensor_type::mxfp4: return type_traits{"MXFP4", 32, 17, true};
    }
    return std::nullopt;
}

std::string_view type_name(tensor_type type) noexcept {
    auto traits = traits_of(static_cast<std::uint32_t>(type));
    return traits ? traits->name : std::string_view("unknown");
}

std::size_t row_bytes(tensor_type type, std::int64_t elems) noexcept {
    auto traits = traits_of(static_cast<std::uint32_t>(type));
    MOED_ASSERT(traits && elems >= 0 && elems % traits->block_elems == 0);
    return static_cast<std::size_t>(elems / traits->block_elems) * traits->block_bytes;
}

}  // namespace moed
