// moe-synth: writes a random-weight qwen3moe GGUF of any shape and storage type, for tests
// and benchmarks (llama.cpp loads these files too, so both engines run the same bytes).
//
//   moe-synth -o FILE [--type F32|F16|BF16|Q8_0|Q4_K|Q6_K|Q4_K_M] [--layers N] [--embd N]
//             [--heads N] [--kv-heads N] [--head-dim N] [--experts N] [--experts-used N]
//             [--ff N] [--vocab N] [--ctx N] [--seed S]
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/cli_util.h"
#include "tools/synth_model.h"

namespace {

[[noreturn]] void fail(const std::string& message) { moed::tools::fail("moe-synth", message); }

template <typename T>
T parse_number(const std::string& flag, const char* text) {
    return moed::tools::parse_number<T>("moe-synth", flag, text, moed::tools::sign::positive);
}

}  // namespace

int main(int argc, char** argv) {
    moed::tools::synth_shape s;
    std::string out_path;
    std::string type = "Q4_K_M";
    std::uint64_t seed = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-o") out_path = next();
        else if (a == "--type") type = next();
        else if (a == "--layers") s.layers = parse_number<std::uint32_t>(a, next());
        else if (a == "--embd") s.embd = parse_number<std::int64_t>(a, next());
        else if (a == "--heads") s.heads = parse_number<std::int64_t>(a, next());
        else if (a == "--kv-heads") s.kv_heads = parse_number<std::int64_t>(a, next());
        else if (a == "--head-dim") s.head_dim = parse_number<std::int64_t>(a, next());
        else if (a == "--experts") s.experts = parse_number<std::int64_t>(a, next());
        else if (a == "--experts-used") s.experts_used = parse_number<std::int64_t>(a, next());
        else if (a == "--ff") s.ff = parse_number<std::int64_t>(a, next());
        else if (a == "--vocab") s.vocab = parse_number<std::int64_t>(a, next());
        else if (a == "--ctx") s.ctx = parse_number<std::int64_t>(a, next());
        else if (a == "--seed") seed = parse_number<std::uint64_t>(a, next());
        else if (a == "-h" || a == "--help") {
            std::printf("usage: moe-synth -o FILE [--type F32|F16|BF16|Q8_0|Q4_K|Q6_K|Q4_K_M] [--layers N]\n"
                        "       [--embd N] [--heads N] [--kv-heads N] [--head-dim N] [--experts N]\n"
                        "       [--experts-used N] [--ff N] [--vocab N] [--ctx N] [--seed S]\n");
            return 0;
        } else {
            fail("unknown argument '" + a + "' (see --help)");
        }
    }
    if (out_path.empty()) fail("no output file given (-o FILE)");
    if (auto done = moed::tools::synthesize_model(out_path, s, type, seed); !done) fail(done.error().message);
    std::printf("%s\n", out_path.c_str());
    return 0;
}
