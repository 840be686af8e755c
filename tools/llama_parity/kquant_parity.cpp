// kquant-parity: checks moed's Q2_K, Q3_K, Q5_K and IQ4_XS code, and for an AVX2 build the
// repacked Q4_0, IQ4_NL and MXFP4 products, against llama.cpp's own, bit for bit. Not part of the build (it needs a llama.cpp build tree); compile it by hand
// against one llama.cpp build and moed's release libraries, e.g. for an AVX-512 build:
//
//   L=/path/to/llama.cpp; B=$L/build-avx512
//   g++ -std=c++20 -O2 -I. -I$L/ggml/include tools/llama_parity/kquant_parity.cpp \
//       build/kernels/libmoed_kernels.a build/common/libmoed_common.a -lfmt \
//       -L$B/bin -lggml-cpu -lggml-base -Wl,-rpath,$B/bin -o /tmp/kquant-parity
//   /tmp/kquant-parity avx512        (avx2 for an AVX2 build)
//
// It compares, on deterministic pseudo-random data:
// - dequantization: ggml's to_float against moed's dequantize_row (random block bytes with
//   finite scales), every value's bits;
// - matrix products: a ggml graph with one mul_mat on the CPU backend (one thread; Q2_K
//   weights in the repacking buffer when the build has AVX-512, and Q4_0, IQ4_NL and MXFP4
//   weights of a multiple of 8 rows always, as llama.cpp loads them)
//   against moed's matmul at the given ISA level, every output's bits, for several row,
//   column and token counts (for repacked Q2_K, each token multiplied alone: see
//   per_token_reference).
// With --golden it also prints the outputs of the fixed case that
// tests/kernels/kquant_llama_parity_test.cpp holds, as C++ initialisers. With --bench it
// only times one-token products, llama.cpp's ggml_vec_dot_*_q8_K row by row against moed.
// Exit status 0 when everything matched.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quantize.h"
#include "tests/kernels/kquant_parity_data.h"

// Exported by ggml-cpu with C++ linkage.
ggml_backend_buffer_type_t ggml_backend_cpu_repack_buffer_type();

namespace {

using namespace moed;
using namespace moed::kernels;

struct type_pair {
    tensor_type moed;
    ggml_type ggml;
};

const type_pair types[] = {
    {tensor_type::q2_k, GGML_TYPE_Q2_K},
    {tensor_type::q3_k, GGML_TYPE_Q3_K},
    {tensor_type::q5_k, GGML_TYPE_Q5_K},
    {tensor_type::iq4_xs, GGML_TYPE_IQ4_XS},
};

// The 32-value block types that llama.cpp repacks on any x86 build with AVX2 (8 rows
// interleaved, ggml_gemv/gemm_*_8x8_q8_0). moed follows that order at its AVX2 level only,
// so these are checked against an AVX2 build only.
const type_pair repacked_q32_types[] = {
    {tensor_type::q4_0, GGML_TYPE_Q4_0},
    {tensor_type::iq4_nl, GGML_TYPE_IQ4_NL},
    {tensor_type::mxfp4, GGML_TYPE_MXFP4},
};

bool repacked_by_llama(ggml_type type, std::int64_t rows) {
    if (rows % 8 != 0) return false;
    if (type == GGML_TYPE_Q2_K) return ggml_cpu_has_avx512() != 0;
    return type == GGML_TYPE_Q4_0 || type == GGML_TYPE_IQ4_NL || type == GGML_TYPE_MXFP4;
}

std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// y = W x through a ggml graph: W [rows x cols] of `type`, x [n_tokens x cols] f32.
std::vector<float> ggml_matmul(ggml_type type, const std::vector<std::byte>& w, std::int64_t rows, std::int64_t cols,
                               const std::vector<float>& x, std::int64_t n_tokens) {
    ggml_init_params params{ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, true};
    ggml_context* wctx = ggml_init(params);
    ggml_context* ctx = ggml_init(params);
    ggml_tensor* wt = ggml_new_tensor_2d(wctx, type, cols, rows);
    ggml_tensor* xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, n_tokens);
    ggml_tensor* yt = ggml_mul_mat(ctx, wt, xt);
    const bool repack = repacked_by_llama(type, rows);
    ggml_backend_buffer_t wbuf =
        ggml_backend_alloc_ctx_tensors_from_buft(wctx, repack ? ggml_backend_cpu_repack_buffer_type() : ggml_backend_cpu_buffer_type());
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, ggml_backend_cpu_buffer_type());
    ggml_backend_tensor_set(wt, w.data(), 0, w.size());
    ggml_backend_tensor_set(xt, x.data(), 0, x.size() * sizeof(float));
    ggml_cgraph* graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, yt);
    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, 1);
    if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS) {
        std::fprintf(stderr, "ggml graph failed\n");
        std::exit(2);
    }
    std::vector<float> y(static_cast<std::size_t>(rows * n_tokens));
    ggml_backend_tensor_get(yt, y.data(), 0, y.size() * sizeof(float));
    ggml_backend_free(backend);
    ggml_backend_buffer_free(buf);
    ggml_backend_buffer_free(wbuf);
    ggml_free(ctx);
    ggml_free(wctx);
    return y;
}

int check_dequantize(const type_pair& t) {
    const std::int64_t n = 64 * 256;
    const std::vector<std::byte> blocks = test::parity_blocks(t.moed, n, 7);
    std::vector<float> want(static_cast<std::size_t>(n)), got(want.size());
    ggml_get_type_traits(t.ggml)->to_float(blocks.data(), want.data(), n);
    dequantize_row(t.moed, blocks.data(), got.data(), n);
    int bad = 0;
    for (std::int64_t i = 0; i < n; ++i) bad += bits_of(got[i]) != bits_of(want[i]);
    std::printf("%-7s dequantize: %d of %lld values differ\n", std::string(type_name(t.moed)).c_str(), bad,
                static_cast<long long>(n));
    return bad;
}

// llama.cpp's AVX-512 build multiplies repacked Q2_K with ggml_gemv_q2_K_8x8_q8_K (one
// float FMA per super-block) for single tokens, for every token of an expert matrix
// (MUL_MAT_ID), and for the last n % 4 tokens of a batch, but with ggml_gemm_q2_K_8x8_q8_K
// (one FMA per half super-block) for groups of 4 tokens of a plain MUL_MAT. moed keeps one
// order per (row, token): gemv's. So there the reference is each token multiplied alone.
bool per_token_reference(const type_pair& t) {
    return t.ggml == GGML_TYPE_Q2_K && ggml_cpu_has_avx512();
}

int check_matmul(const type_pair& t, std::int64_t rows, std::int64_t cols, std::int64_t n_tokens, compute_pool& pool,
                 std::vector<float>* out = nullptr) {
    const std::vector<std::byte> w = test::parity_blocks(t.moed, rows * cols, 11 + static_cast<std::uint64_t>(rows + cols));
    const std::vector<float> x = test::parity_activations(n_tokens * cols, 13 + static_cast<std::uint64_t>(n_tokens));
    std::vector<float> want = ggml_matmul(t.ggml, w, rows, cols, x, n_tokens);
    if (per_token_reference(t)) {
        const std::vector<float> batched = want;
        int batched_differ = 0;
        for (std::int64_t k = 0; k < n_tokens; ++k) {
            const std::vector<float> xk(x.begin() + k * cols, x.begin() + (k + 1) * cols);
            const std::vector<float> yk = ggml_matmul(t.ggml, w, rows, cols, xk, 1);
            for (std::int64_t r = 0; r < rows; ++r) {
                want[static_cast<std::size_t>(k * rows + r)] = yk[static_cast<std::size_t>(r)];
                batched_differ += bits_of(yk[static_cast<std::size_t>(r)]) != bits_of(batched[static_cast<std::size_t>(k * rows + r)]);
            }
        }
        std::printf("        (llama.cpp itself: %d of %zu outputs differ between its batched and one-token products)\n",
                    batched_differ, want.size());
    }
    std::vector<float> got(want.size());
    activation_buffer act;
    matmul(matrix_view{t.moed, w.data(), rows, cols, row_bytes(t.moed, cols)}, x.data(), n_tokens, got.data(), rows, pool, act);
    int bad = 0;
    double max_rel = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (bits_of(got[i]) != bits_of(want[i])) {
            ++bad;
            max_rel = std::fmax(max_rel, std::fabs(static_cast<double>(got[i]) - want[i]) / std::fmax(1e-30, std::fabs(want[i])));
        }
    }
    std::printf("%-7s matmul rows=%lld cols=%lld tokens=%lld: %d of %zu outputs differ (max rel %.2e)\n",
                std::string(type_name(t.moed)).c_str(), static_cast<long long>(rows), static_cast<long long>(cols),
                static_cast<long long>(n_tokens), bad, got.size(), max_rel);
    if (out != nullptr) *out = want;
    return bad;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best time of one call over ~0.2 s of calls.
template <class F>
double best_us(F&& call) {
    call();
    double best = 1e30;
    const auto start = std::chrono::steady_clock::now();
    do {
        const auto t0 = std::chrono::steady_clock::now();
        call();
        best = std::fmin(best, seconds_since(t0));
    } while (seconds_since(start) < 0.2);
    return best * 1e6;
}

// One token times a [rows x cols] matrix, one thread: llama.cpp's dot product per row (with
// its Q8_K conversion of the token) against moed's matmul.
void bench_decode(const type_pair& t, std::int64_t rows, std::int64_t cols, compute_pool& pool) {
    const std::vector<std::byte> w = test::parity_blocks(t.moed, rows * cols, 3);
    const std::vector<float> x = test::parity_activations(cols, 5);
    const ggml_type_traits_cpu* traits = ggml_get_type_traits_cpu(t.ggml);
    std::vector<std::byte> xq(ggml_row_size(traits->vec_dot_type, cols));
    std::vector<float> y(static_cast<std::size_t>(rows));
    const std::size_t rb = row_bytes(t.moed, cols);
    const double llama_us = best_us([&] {
        ggml_get_type_traits_cpu(traits->vec_dot_type)->from_float(x.data(), xq.data(), cols);
        for (std::int64_t r = 0; r < rows; ++r) {
            traits->vec_dot(static_cast<int>(cols), &y[static_cast<std::size_t>(r)], 0, w.data() + r * rb, 0, xq.data(), 0, 1);
        }
    });
    activation_buffer act;
    const matrix_view view{t.moed, w.data(), rows, cols, rb};
    const double moed_us = best_us([&] { matmul(view, x.data(), 1, y.data(), rows, pool, act); });
    std::printf("%-7s decode %lldx%lld: llama.cpp vec_dot %.1f us, moed %.1f us\n", std::string(type_name(t.moed)).c_str(),
                static_cast<long long>(rows), static_cast<long long>(cols), llama_us, moed_us);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || (std::string(argv[1]) != "avx2" && std::string(argv[1]) != "avx512")) {
        std::fprintf(stderr, "usage: kquant-parity avx2|avx512 [--golden | --bench]\n");
        return 2;
    }
    const bool avx512 = std::string(argv[1]) == "avx512";
    const bool golden = argc > 2 && std::string(argv[2]) == "--golden";
    const bool bench = argc > 2 && std::string(argv[2]) == "--bench";
    if (avx512 != (ggml_cpu_has_avx512() != 0)) {
        std::fprintf(stderr, "this llama.cpp build %s AVX-512\n", ggml_cpu_has_avx512() ? "has" : "lacks");
        return 2;
    }
    force_isa(avx512 ? isa::avx512 : isa::avx2);
    ggml_cpu_init();
    compute_pool pool(1);
    if (bench) {
        for (const type_pair& t : types) {
            bench_decode(t, 2048, 768, pool);
            bench_decode(t, 768, 2048, pool);
        }
        return 0;
    }
    int bad = 0;
    std::vector<type_pair> checked(std::begin(types), std::end(types));
    if (!avx512) checked.insert(checked.end(), std::begin(repacked_q32_types), std::end(repacked_q32_types));
    for (const type_pair& t : checked) {
        bad += check_dequantize(t);
        for (std::int64_t cols : {256, 2304}) {
            for (std::int64_t n_tokens : {1, 2, 3, 4, 5, 8, 13}) bad += check_matmul(t, 16, cols, n_tokens, pool);
        }
    }
    if (golden) {
        std::printf("// %s\n", avx512 ? "avx512" : "avx2");
        for (const type_pair& t : checked) {
            std::vector<float> want;
            bad += check_matmul(t, test::parity_rows, test::parity_cols, test::parity_tokens, pool, &want);
            std::printf("{");
            for (std::size_t i = 0; i < want.size(); ++i) std::printf("%s0x%08x", i == 0 ? "" : ", ", bits_of(want[i]));
            std::printf("},\n");
        }
    }
    std::printf("%s\n", bad == 0 ? "all bits match" : "MISMATCHES");
    return bad == 0 ? 0 : 1;
}
