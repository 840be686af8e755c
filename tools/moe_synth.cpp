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

void usage() {
    const moed::tools::realistic_routing d;
    std::printf("usage: moe-synth -o FILE [--type F32|F16|BF16|Q8_0|Q4_K|Q6_K|Q4_K_M] [--layers N]\n"
                "       [--embd N] [--heads N] [--kv-heads N] [--head-dim N] [--experts N]\n"
                "       [--experts-used N] [--ff N] [--vocab N] [--ctx N] [--seed S]\n"
                "       [--routing random|realistic [--token-clustering C] [--context-carry G]\n"
                "        [--stream-noise N] [--attention-sharpness A]]\n"
                "  --routing random (default): every weight random; routing has no relation to the text.\n"
                "  --routing realistic: structured embeddings, attention and routers so that routing has a\n"
                "    trained model's statistics (reuse between tokens, per-domain skew, lookahead recall):\n"
                "    --token-clustering C    share of a token's routing features from its class, 0..1 (%g)\n"
                "    --context-carry G       attention's gain carrying the context into routing, >= 0 (%g)\n"
                "    --stream-noise N        random writes into the routing features, x random mode's, >= 0 (%g)\n"
                "    --attention-sharpness A peak logit of the context heads; small = plain mean, > 0 (%g)\n",
                static_cast<double>(d.token_clustering), static_cast<double>(d.context_carry),
                static_cast<double>(d.stream_noise), static_cast<double>(d.attention_sharpness));
}

template <typename T>
T parse_number(const std::string& flag, const char* text) {
    return moed::tools::parse_number<T>("moe-synth", flag, text, moed::tools::sign::positive);
}

float parse_knob(const std::string& flag, const char* text) {
    return moed::tools::parse_number<float>("moe-synth", flag, text);
}

}  // namespace

int main(int argc, char** argv) {
    moed::tools::synth_shape s;
    moed::tools::synth_options o;
    std::string out_path;
    bool knob_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-o") out_path = next();
        else if (a == "--type") o.type = next();
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
        else if (a == "--seed") o.seed = parse_number<std::uint64_t>(a, next());
        else if (a == "--routing") {
            const std::string v = next();
            const auto r = moed::tools::parse_routing(v);
            if (!r) fail("--routing must be random or realistic, not '" + v + "'");
            o.routing = *r;
        } else if (a == "--token-clustering") {
            o.realistic.token_clustering = parse_knob(a, next());
            knob_given = true;
        } else if (a == "--context-carry") {
            o.realistic.context_carry = parse_knob(a, next());
            knob_given = true;
        } else if (a == "--stream-noise") {
            o.realistic.stream_noise = parse_knob(a, next());
            knob_given = true;
        } else if (a == "--attention-sharpness") {
            o.realistic.attention_sharpness = parse_knob(a, next());
            knob_given = true;
        }
        else if (a == "-h" || a == "--help") {
            usage();
            return 0;
        } else {
            fail("unknown argument '" + a + "' (see --help)");
        }
    }
    if (out_path.empty()) fail("no output file given (-o FILE)");
    if (knob_given && o.routing != moed::tools::synth_routing::realistic) {
        fail("--token-clustering, --context-carry, --stream-noise and --attention-sharpness need --routing realistic");
    }
    if (auto done = moed::tools::synthesize_model(out_path, s, o); !done) fail(done.error().message);
    std::printf("%s\n", out_path.c_str());
    return 0;
}
