// moe-synth: writes a MoE GGUF (qwen3moe by default; --arch llama, qwen2moe, olmoe, gpt-oss,
// deepseek2 or glm4moe) of any shape and storage type with random weights, for tests and
// benchmarks (llama.cpp loads these files too, so both engines run the same bytes).
//
//   moe-synth -o FILE [--arch A] [--type T] [--layers N] [--embd N]
//             [--heads N] [--kv-heads N] [--head-dim N] [--experts N] [--experts-used N]
//             [--ff N] [--vocab N | --vocab-from FILE.gguf] [--ctx N] [--seed S]
//   T: F32 F16 BF16 Q8_0 Q4_K Q6_K Q4_K_M Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL MXFP4 Q2_K Q3_K Q5_K IQ4_XS
//             [--routing random|realistic [--token-clustering C] [--context-carry G]
//              [--stream-noise N] [--attention-sharpness A]]
//             [--variant V] [--dense-layers N] [--dense-ff N] [--shared-experts N] [--rope-dim N]
//             [--nextn-layers N] [--kv-lora-rank N] [--q-lora-rank N] [--v-head-dim N]
//
// The last line is for deepseek2 (--variant v2-lite, the default, v3 or v2-lite-legacy) and glm4moe
// (--variant air, the default, or qk-norm); synth_model.h says what each variant has.
//
// --vocab-from takes the tokenizer (every tokenizer.* key) of another GGUF file, such as
// the vocabulary-only models/tokenizer/qwen3-vocab.gguf, and sizes the embedding and the
// output head to its vocabulary: a random-weight model that tokenizes like a real one (its
// top-2 logit margins are those of a 151,936-way choice, which is what the golden tests
// at each ISA level need). Random routing only.
// --routing random (the default) writes what it always wrote: every weight random. Its
// routing is not the routing of a trained model: a few experts win everywhere (on the domain
// prompts the quarter of experts a layer uses most takes 0.56 of its routings; the bundled
// trained model's, 0.40) and no kind of text has experts of its own.
// --routing realistic structures the embeddings, attention and routers (synth_model.h and
// synth_model.cpp tell how) so that routing has the bundled model's statistics. Its four
// knobs were calibrated by measuring, on a model of the bundled model's shape
//   moe-synth -o M.gguf --type Q4_K_M --layers 6 --experts 16 --experts-used 4 --vocab 4096
//             --ctx 1024 --routing realistic [knobs]
// (the other dimensions' defaults are the bundled model's), the statistics of
// bench/routing-stats.sh (a routing trace recorded by moe-run over the domain prompts, then
// trace-stats and trace-replay) against the bundled model's: lookahead recall@k at distance
// 1 and 2 (0.786, 0.689), previous-token reuse (0.430), per-domain top-quarter share
// (0.403) and LRU's misses over Belady's with a per-layer cache of 37.5/50/75% (1.365,
// 1.622, 2.113). The sweeps ran on every fourth prompt of each domain (52 prompts; the
// bundled model's figures there are within 0.01 of the full set's). What each knob did, as
// measured there around the defaults: context_carry is the main lever on reuse (0.5 -> 0.3
// -> 0.2: reuse 0.54 -> 0.49 -> 0.44) and on the top-quarter share, and lowers lookahead
// recall a little; stream_noise sets lookahead recall (0 gives 0.96 / 0.93 at distance 1 /
// 2) and, through the context the random heads carry, adds some reuse (0.38 at 0) and skew;
// attention_sharpness 0.5 (close to a plain mean over the context) raised the last layers'
// top-quarter share to 0.57 (0.45 at 6, a recency window); token_clustering moved every
// figure by under 0.02 between 0.1 and 0.7. Before the vocabulary had words with a leading
// space, a lone space token made up a quarter to a third of the text, and its experts won
// everywhere whatever the knobs (top-quarter share above 0.6). The defaults (0.3, 0.2, 0.8,
// 6) give on all 200 prompts, as ratios to the bundled model: lookahead 1.025 / 1.030,
// reuse 1.052, top-quarter share 0.966, LRU/Belady 1.011 / 1.020 / 1.030. Not matched: how far each
// domain's expert distribution lies from all domains' (total variation 0.05, the bundled
// model's 0.13): the synthetic text classes separate the domains less than a trained
// model's semantics do.
// At Qwen3-30B-A3B's shape with 12 layers (bench/make-bench-models.sh; 20 of the prompts)
// the same knobs give lookahead 0.76 / 0.65 and reuse 0.37 (0.97, 0.95 and 0.90 of the
// bundled model's), but routing is more concentrated: top-quarter share 0.62 and
// LRU/Belady 2.1 / 2.3 / 2.5 (1.45x and 1.2-1.55x). The concentration comes with the
// shape, not the knobs: a top-8 of 128 experts is more selective than a top-4 of 16, and
// it grows with depth; context_carry 0.1 or 0.05 left it at 0.62 / 0.56.
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
    std::printf("usage: moe-synth -o FILE [--arch qwen3moe|llama|qwen2moe|olmoe|gpt-oss|deepseek2|glm4moe]\n"
                "       [--type F32|F16|BF16|Q8_0|Q4_K|Q6_K|Q4_K_M|Q4_0|Q4_1|Q5_0|Q5_1|IQ4_NL|MXFP4|Q2_K|Q3_K|Q5_K|IQ4_XS]\n"
                "       [--layers N]\n"
                "       [--embd N] [--heads N] [--kv-heads N] [--head-dim N] [--experts N]\n"
                "       [--experts-used N] [--ff N] [--vocab N | --vocab-from FILE.gguf] [--ctx N] [--seed S]\n"
                "       [--routing random|realistic [--token-clustering C] [--context-carry G]\n"
                "        [--stream-noise N] [--attention-sharpness A]]\n"
                "  --vocab-from FILE.gguf: the tokenizer of FILE (its tokenizer.* keys); the embedding and output\n"
                "    head are sized to its vocabulary. Random routing only.\n"
                "  --routing random (default): every weight random; routing has no relation to the text.\n"
                "  --routing realistic: structured embeddings, attention and routers so that routing has a\n"
                "    trained model's statistics (reuse between tokens, per-domain skew, lookahead recall):\n"
                "    --token-clustering C    share of a token's routing features from its class, 0..1 (%g)\n"
                "    --context-carry G       attention's gain carrying the context into routing, >= 0 (%g)\n"
                "    --stream-noise N        random writes into the routing features, x random mode's, >= 0 (%g)\n"
                "    --attention-sharpness A peak logit of the context heads; small = plain mean, > 0 (%g)\n"
                "  deepseek2 and glm4moe: [--variant v2-lite|v3|v2-lite-legacy (deepseek2), air|qk-norm (glm4moe)]\n"
                "    [--dense-layers N] [--dense-ff N] [--shared-experts N] [--rope-dim N] [--nextn-layers N]\n"
                "    deepseek2's latent attention: [--kv-lora-rank N] [--q-lora-rank N (v3)] [--v-head-dim N]\n",
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
    bool vocab_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-o") out_path = next();
        else if (a == "--type") o.type = next();
        else if (a == "--arch") o.arch = next();
        else if (a == "--layers") s.layers = parse_number<std::uint32_t>(a, next());
        else if (a == "--embd") s.embd = parse_number<std::int64_t>(a, next());
        else if (a == "--heads") s.heads = parse_number<std::int64_t>(a, next());
        else if (a == "--kv-heads") s.kv_heads = parse_number<std::int64_t>(a, next());
        else if (a == "--head-dim") s.head_dim = parse_number<std::int64_t>(a, next());
        else if (a == "--experts") s.experts = parse_number<std::int64_t>(a, next());
        else if (a == "--experts-used") s.experts_used = parse_number<std::int64_t>(a, next());
        else if (a == "--ff") s.ff = parse_number<std::int64_t>(a, next());
        else if (a == "--vocab") {
            s.vocab = parse_number<std::int64_t>(a, next());
            vocab_given = true;
        } else if (a == "--vocab-from") o.vocab_from = next();
        else if (a == "--ctx") s.ctx = parse_number<std::int64_t>(a, next());
        else if (a == "--seed") o.seed = parse_number<std::uint64_t>(a, next());
        else if (a == "--variant") o.variant = next();
        else if (a == "--dense-layers") s.dense_layers = moed::tools::parse_number<std::uint32_t>("moe-synth", a, next());
        else if (a == "--dense-ff") s.dense_ff = parse_number<std::int64_t>(a, next());
        else if (a == "--shared-experts") s.shared_experts = moed::tools::parse_number<std::int64_t>("moe-synth", a, next());
        else if (a == "--rope-dim") s.rope_dim = parse_number<std::int64_t>(a, next());
        else if (a == "--nextn-layers") s.nextn_layers = moed::tools::parse_number<std::uint32_t>("moe-synth", a, next());
        else if (a == "--kv-lora-rank") s.kv_lora_rank = parse_number<std::int64_t>(a, next());
        else if (a == "--q-lora-rank") s.q_lora_rank = parse_number<std::int64_t>(a, next());
        else if (a == "--v-head-dim") s.v_head_dim = parse_number<std::int64_t>(a, next());
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
    if (vocab_given && !o.vocab_from.empty()) fail("--vocab and --vocab-from exclude each other");
    if (!o.vocab_from.empty() && o.routing != moed::tools::synth_routing::random) {
        fail("--vocab-from needs --routing random");
    }
    if (knob_given && o.routing != moed::tools::synth_routing::realistic) {
        fail("--token-clustering, --context-carry, --stream-noise and --attention-sharpness need --routing realistic");
    }
    if (auto done = moed::tools::synthesize_model(out_path, s, o); !done) fail(done.error().message);
    std::printf("%s\n", out_path.c_str());
    return 0;
}
