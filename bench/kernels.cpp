// bench-kernels: speed of the CPU matmul kernels on Qwen3-30B-A3B expert shapes.
// For each weight type: a decode matvec (1 token) on 768x2048 (gate/up) and 2048x768
// (down), and a 64-token prefill matmul on both, with 1 and 2 threads. Decode is measured
// twice: "cold" streams through distinct matrices larger than the last-level cache, as real
// decoding streams expert weights from memory, and "hot" reuses one matrix (the kernel's
// compute speed); prefill reuses one matrix. Prints one JSON object: per case the time per
// call (best batch of ~100 us) and its mean over all batches, GFLOP/s (2*rows*cols*tokens)
// and weight GB/s of the best batch.
// Usage: bench-kernels [--isa scalar|avx2|avx512] [--quick] [--type Q4_K] [--threads N] [--shape RxC]
#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quantize.h"

namespace {

using namespace moed;
using namespace moed::kernels;
using clock_type = std::chrono::steady_clock;

struct shape {
    std::int64_t rows;
    std::int64_t cols;
};

// Enough distinct copies of a matrix that decode reads them from DRAM (L3 is 32 MiB here).
constexpr std::size_t cold_bytes_min = 256u << 20;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    std::string_view only_type;
    int only_threads = 0;
    std::vector<shape> shapes = {{2048, 768}, {768, 2048}};
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--quick") {
            quick = true;
        } else if (arg == "--type" && i + 1 < argc) {
            only_type = argv[++i];
        } else if (arg == "--threads" && i + 1 < argc) {
            only_threads = std::atoi(argv[++i]);
        } else if (arg == "--shape" && i + 1 < argc) {
            // ROWSxCOLS, e.g. 2880x2880 (gpt-oss's expert matrices); replaces the defaults.
            long long r = 0, c = 0;
            if (std::sscanf(argv[++i], "%lldx%lld", &r, &c) != 2 || r <= 0 || c <= 0 || c % 32 != 0) {
                std::fprintf(stderr, "bench-kernels: --shape wants ROWSxCOLS with COLS a multiple of 32, got '%s'\n", argv[i]);
                return 2;
            }
            shapes = {shape{r, c}};
        } else if (arg == "--isa" && i + 1 < argc) {
            const std::string_view v = argv[++i];
            force_isa(v == "scalar" ? isa::scalar : v == "avx2" ? isa::avx2 : isa::avx512);
        } else {
            std::fprintf(stderr, "usage: bench-kernels [--isa scalar|avx2|avx512] [--quick] [--type NAME] [--threads N] [--shape RxC]\n");
            return 2;
        }
    }
    const double min_time_s = quick ? 0.05 : 0.3;
    const tensor_type types[] = {tensor_type::q4_k,  tensor_type::q6_k, tensor_type::q8_0,  tensor_type::q2_k,
                                 tensor_type::q3_k,  tensor_type::q5_k, tensor_type::iq4_xs, tensor_type::f16,
                                 tensor_type::bf16,  tensor_type::f32,  tensor_type::q4_0,  tensor_type::q4_1,
                                 tensor_type::q5_0,  tensor_type::q5_1, tensor_type::iq4_nl, tensor_type::mxfp4};
    const int token_counts[] = {1, 64};
    const int thread_counts[] = {1, 2};

    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);

    std::printf("{\n  \"isa\": \"%s\",\n  \"results\": [\n", std::string(isa_name(active_isa())).c_str());
    bool first = true;
    for (const int n_threads : thread_counts) {
        if (only_threads != 0 && n_threads != only_threads) continue;
        compute_pool pool(n_threads);
        for (const tensor_type type : types) {
            if (!only_type.empty() && type_name(type) != only_type) continue;
            for (const shape s : shapes) {
                // A --shape whose columns the type's blocks do not divide (2880 for a K-quant).
                if (s.cols % traits_of(static_cast<std::uint32_t>(type))->block_elems != 0) continue;
                std::vector<float> wf(static_cast<std::size_t>(s.rows * s.cols));
                for (auto& v : wf) v = normal(rng) * 0.05f;
                const std::size_t rb = row_bytes(type, s.cols);
                const std::size_t matrix_bytes = rb * static_cast<std::size_t>(s.rows);
                std::vector<std::byte> one(matrix_bytes);
                for (std::int64_t r = 0; r < s.rows; ++r) {
                    quantize_row(type, wf.data() + r * s.cols, one.data() + r * rb, s.cols);
                }
                const std::size_t n_copies = std::max<std::size_t>(1, cold_bytes_min / matrix_bytes);
                std::vector<std::byte> cold(matrix_bytes * n_copies);
                for (std::size_t c = 0; c < n_copies; ++c) std::memcpy(cold.data() + c * matrix_bytes, one.data(), matrix_bytes);

                for (const int n_tokens : token_counts) {
                  for (const bool streaming : {true, false}) {
                    if (streaming && n_tokens != 1) continue;
                    std::vector<float> x(static_cast<std::size_t>(n_tokens * s.cols));
                    for (auto& v : x) v = normal(rng);
                    std::vector<float> y(static_cast<std::size_t>(n_tokens * s.rows));
                    // A prefill's tokens sum as the engine's prompt tokens do (sum_order.h).
                    std::vector<sum_order> orders(static_cast<std::size_t>(n_tokens));
                    for (int t = 0; t < n_tokens; ++t) orders[static_cast<std::size_t>(t)] = prompt_token_order(t, n_tokens);
                    activation_buffer act;
                    auto view_of = [&](std::size_t copy) {
                        const std::byte* base = streaming ? cold.data() + copy * matrix_bytes : one.data();
                        return matrix_view{type, base, s.rows, s.cols, rb};
                    };
                    // Warm up (and size the activation buffer).
                    matmul(view_of(0), x.data(), n_tokens, y.data(), s.rows, pool, act, orders.data());
                    // The best batch of calls (a batch lasts about 100 us): the machine may
                    // be shared, and the minimum is the figure least disturbed by others.
                    const auto t_first = clock_type::now();
                    matmul(view_of(0), x.data(), n_tokens, y.data(), s.rows, pool, act, orders.data());
                    const int batch = std::max(1, static_cast<int>(100e-6 / std::max(1e-9, seconds_since(t_first))));
                    std::size_t copy = 0;
                    double best_s = 1e30;
                    double sum_s = 0.0;  // and the mean, which shows what a loaded machine costs
                    long n_calls = 0;
                    const auto t_start = clock_type::now();
                    do {
                        const auto t0 = clock_type::now();
                        for (int k = 0; k < batch; ++k) {
                            matmul(view_of(copy), x.data(), n_tokens, y.data(), s.rows, pool, act, orders.data());
                            if (++copy == n_copies) copy = 0;
                        }
                        const double batch_s = seconds_since(t0);
                        best_s = std::min(best_s, batch_s / batch);
                        sum_s += batch_s;
                        n_calls += batch;
                    } while (seconds_since(t_start) < min_time_s);
                    const double per_call_s = best_s;
                    const double flops = 2.0 * static_cast<double>(s.rows * s.cols * n_tokens);
                    std::printf("%s    {\"type\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"tokens\": %d, "
                                "\"threads\": %d, \"weights\": \"%s\", \"us_per_call\": %.2f, "
                                "\"gflops\": %.2f, \"weight_gbps\": %.2f, \"mean_us\": %.1f}",
                                first ? "" : ",\n", std::string(type_name(type)).c_str(),
                                static_cast<long long>(s.rows), static_cast<long long>(s.cols), n_tokens, n_threads,
                                streaming ? "cold" : "hot", per_call_s * 1e6, flops / per_call_s * 1e-9,
                                static_cast<double>(matrix_bytes) / per_call_s * 1e-9, sum_s / n_calls * 1e6);
                    first = false;
                    std::fflush(stdout);
                  }
                }
            }
        }
    }
    std::printf("\n  ]\n}\n");
    return 0;
}
