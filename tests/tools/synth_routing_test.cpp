// Checks the model synthesizer's two routing modes (tools/synth_model.h):
// - the random mode still writes exactly the bytes it wrote before the realistic mode
//   existed (FNV-1a of an F32 and a Q8_0 file, hashes taken from the earlier moe-synth);
// - a mode writes the same bytes for the same seed, other bytes for another seed;
// - a small realistic-routing model, run on a C snippet and an English one, routes with
//   the structure of a trained MoE: a token shares more experts with the previous token
//   than with a token half the text away (routers with no structure give the same for
//   both), the router lookahead at distance 1 finds most of a layer's experts and far more
//   of them than of a far token's, and the quarter of experts a layer uses most take well
//   under half its routings, clearly less than in the random mode's model of the same shape
//   (whose routing is persistent too, by accident of its random residual stream, but
//   dominated by a few experts everywhere);
// - bad knobs are refused with an error naming the knob, and moe-synth refuses an unknown
//   --routing and knobs without --routing realistic.
#include <algorithm>
#include <array>
#include <bit>
#include <functional>
#include <limits>
#include <fstream>
#include <iterator>
#include <numeric>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/run_tool.h"
#include "tests/support/test_paths.h"
#include "tools/synth_model.h"

namespace moed::tools {
namespace {

std::uint64_t file_hash(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (std::istreambuf_iterator<char> it(in), end; it != end; ++it) {
        h = (h ^ static_cast<unsigned char>(*it)) * 0x100000001b3ull;
    }
    return h;
}

std::string temp_path(const std::string& name) { return (test::temp_dir() / name).string(); }

TEST(synth_routing, random_mode_writes_the_same_bytes_as_before) {
    // `moe-synth -o FILE --type T --seed 3` before the realistic mode existed.
    const std::array<std::pair<const char*, std::uint64_t>, 2> before{
        {{"F32", 0x0e40e5b17251d571ull}, {"Q8_0", 0xe3705b48193dcb2eull}}};
    for (const auto& [type, hash] : before) {
        const std::string path = temp_path(std::string("before-") + type + ".gguf");
        synth_options o;
        o.type = type;
        o.seed = 3;
        ASSERT_TRUE(synthesize_model(path, synth_shape{}, o));
        EXPECT_EQ(file_hash(path), hash) << type;
    }
}

synth_shape small_shape() {
    synth_shape s;
    s.layers = 4;
    s.embd = 128;
    s.heads = 4;
    s.kv_heads = 2;
    s.head_dim = 32;
    s.experts = 16;
    s.experts_used = 4;
    s.ff = 64;
    s.vocab = 1024;
    s.ctx = 512;
    return s;
}

TEST(synth_routing, same_seed_same_bytes) {
    synth_options o;
    o.type = "Q8_0";
    o.routing = synth_routing::realistic;
    const std::string a = temp_path("det-a.gguf"), b = temp_path("det-b.gguf"), c = temp_path("det-c.gguf");
    synth_shape shape = small_shape();
    shape.layers = 1;
    ASSERT_TRUE(synthesize_model(a, shape, o));
    ASSERT_TRUE(synthesize_model(b, shape, o));
    o.seed = 2;
    ASSERT_TRUE(synthesize_model(c, shape, o));
    EXPECT_EQ(file_hash(a), file_hash(b));
    EXPECT_NE(file_hash(a), file_hash(c));
}

constexpr const char* c_text =
    "static int parse_header(const char *buf, size_t len, struct header *out)\n"
    "{\n"
    "    if (len < HEADER_SIZE)\n"
    "        return -EINVAL;\n"
    "    out->magic = read_u32(buf);\n"
    "    out->version = read_u16(buf + 4);\n"
    "    if (out->magic != MAGIC || out->version > MAX_VERSION) {\n"
    "        fprintf(stderr, \"bad header: %x %u\\n\", out->magic, out->version);\n"
    "        return -EPROTO;\n"
    "    }\n"
    "    for (size_t i = 0; i < out->count; i++)\n"
    "        out->items[i] = read_u32(buf + 8 + 4 * i);\n"
    "    return 0;\n"
    "}\n";
constexpr const char* prose_text =
    "The river ran low that summer, and the children of the village walked along its bed "
    "looking for the stones their grandparents had talked about. Most of them were plain and "
    "grey, but now and then one of the older boys would hold up something that caught the "
    "light, and the others would gather round to see it before the sun went down behind the "
    "hills and their mothers called them home for supper.";

// Routing of every (text, layer, position): the chosen experts and the top-k of the router
// lookahead at distance 1, as bit sets (n_expert <= 64).
struct routing_log {
    std::uint32_t n_layer = 0;
    std::size_t k = 0;
    // [text][layer][position]
    std::vector<std::vector<std::vector<std::uint64_t>>> chosen, predicted;
};

std::uint64_t top_k_bits(const float* p, std::size_t n, std::size_t k) {
    std::vector<std::size_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                      [&](std::size_t a, std::size_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < k; ++i) bits |= 1ull << idx[i];
    return bits;
}

routing_log run_texts(const std::string& path) {
    auto loaded = engine::model::load(path);
    EXPECT_TRUE(loaded) << loaded.error().message;
    if (!loaded) return {};
    engine::model& m = **loaded;
    const auto& hp = m.hparams();
    routing_log log;
    log.n_layer = hp.n_layer;
    log.k = hp.n_expert_used;
    kernels::compute_pool pool(2);
    engine::evaluator eval(m, pool, 64);
    eval.set_lookahead_depth(1);
    std::size_t text = 0;
    eval.add_routing_observer([&](const engine::routing_event& ev) {
        const std::size_t n_exp = hp.n_expert;
        for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
            std::uint64_t bits = 0;
            for (std::size_t s = 0; s < log.k; ++s) bits |= 1ull << ev.chosen[static_cast<std::size_t>(t) * log.k + s];
            log.chosen[text][ev.layer].push_back(bits);
            log.predicted[text][ev.layer].push_back(top_k_bits(ev.lookahead.data() + t * n_exp, n_exp, log.k));
        }
    });
    std::vector<float> logits;
    for (const char* body : {c_text, prose_text}) {
        log.chosen.emplace_back(hp.n_layer);
        log.predicted.emplace_back(hp.n_layer);
        const auto ids = m.vocab().encode(body, false);
        engine::kv_cache cache(hp.n_layer, static_cast<std::int64_t>(ids.size()), hp.n_head_kv, hp.head_dim);
        EXPECT_TRUE(eval.run_sequence(ids, cache, logits, text));
        ++text;
    }
    return log;
}

double shared(std::uint64_t a, std::uint64_t b, std::size_t k) {
    return static_cast<double>(std::popcount(a & b)) / static_cast<double>(k);
}

struct routing_figures {
    double previous = 0, far = 0;            // experts shared with the previous / a far token
    double lookahead = 0, lookahead_far = 0; // lookahead top-k against the token's / a far token's choice
    double top_quarter_share = 0;            // of all routings per layer, mean over layers
};

routing_figures figures(const routing_log& log, std::size_t n_expert) {
    routing_figures f;
    double n = 0, n_prev = 0;
    for (std::size_t text = 0; text < log.chosen.size(); ++text) {
        for (std::uint32_t l = 0; l < log.n_layer; ++l) {
            const auto& c = log.chosen[text][l];
            const auto& p = log.predicted[text][l];
            const std::size_t len = c.size();
            for (std::size_t i = 0; i < len; ++i) {
                const std::size_t far = (i + len / 2) % len;  // half the text away
                f.far += shared(c[i], c[far], log.k);
                f.lookahead += shared(p[i], c[i], log.k);
                f.lookahead_far += shared(p[far], c[i], log.k);
                n += 1;
                if (i > 0) {
                    f.previous += shared(c[i], c[i - 1], log.k);
                    n_prev += 1;
                }
            }
        }
    }
    f.previous /= n_prev;
    f.far /= n;
    f.lookahead /= n;
    f.lookahead_far /= n;
    for (std::uint32_t l = 0; l < log.n_layer; ++l) {
        std::vector<double> load(n_expert, 0.0);
        double total = 0;
        for (const auto& text : log.chosen) {
            for (std::uint64_t bits : text[l]) {
                for (std::size_t e = 0; e < n_expert; ++e) load[e] += static_cast<double>((bits >> e) & 1);
                total += static_cast<double>(log.k);
            }
        }
        std::sort(load.begin(), load.end(), std::greater<>());
        f.top_quarter_share += std::accumulate(load.begin(), load.begin() + static_cast<std::ptrdiff_t>(n_expert / 4), 0.0) / total;
    }
    f.top_quarter_share /= log.n_layer;
    return f;
}

TEST(synth_routing, realistic_mode_routes_with_structure_and_balanced_loads) {
    const synth_shape shape = small_shape();
    synth_options o;
    o.type = "Q8_0";
    const std::string random_path = temp_path("random.gguf"), realistic_path = temp_path("realistic.gguf");
    ASSERT_TRUE(synthesize_model(random_path, shape, o));
    o.routing = synth_routing::realistic;
    ASSERT_TRUE(synthesize_model(realistic_path, shape, o));
    const auto n_expert = static_cast<std::size_t>(shape.experts);
    const routing_figures random = figures(run_texts(random_path), n_expert);
    const routing_figures realistic = figures(run_texts(realistic_path), n_expert);
    auto show = [](const routing_figures& f) {
        return "previous " + std::to_string(f.previous) + " far " + std::to_string(f.far) + " lookahead " +
               std::to_string(f.lookahead) + " lookahead_far " + std::to_string(f.lookahead_far) +
               " top_quarter_share " + std::to_string(f.top_quarter_share);
    };
    SCOPED_TRACE("random: " + show(random) + "\nrealistic: " + show(realistic));
    // Reuse between neighbours that a far token does not share: routers without structure
    // give previous == far (within about 0.01 on this many tokens).
    EXPECT_GT(realistic.previous - realistic.far, 0.03);
    // The lookahead predicts this token's routing, not just the text's usual experts.
    EXPECT_GT(realistic.lookahead, 0.7);
    EXPECT_GT(realistic.lookahead - realistic.lookahead_far, 0.3);
    // Loads spread like a trained model's (the bundled model's top quarter takes 0.40 of a
    // domain's routings), clearly more evenly than the random mode's.
    EXPECT_LT(realistic.top_quarter_share, 0.45);
    EXPECT_LT(realistic.top_quarter_share + 0.05, random.top_quarter_share);
}

TEST(synth_routing, bad_knobs_are_refused_by_name) {
    synth_options o;
    o.type = "Q8_0";
    o.routing = synth_routing::realistic;
    const std::string path = temp_path("bad.gguf");
    auto refused = [&](const char* knob) {
        auto r = synthesize_model(path, small_shape(), o);
        EXPECT_FALSE(r) << knob;
        if (!r) {
            EXPECT_NE(r.error().message.find(knob), std::string::npos) << r.error().message;
        }
    };
    o.realistic.token_clustering = 1.5f;
    refused("token_clustering");
    o.realistic = {};
    o.realistic.context_carry = -1.0f;
    refused("context_carry");
    o.realistic = {};
    o.realistic.stream_noise = std::numeric_limits<float>::infinity();
    refused("stream_noise");
    o.realistic = {};
    o.realistic.attention_sharpness = 0.0f;
    refused("attention_sharpness");
    // The random mode ignores the knobs.
    o.routing = synth_routing::random;
    EXPECT_TRUE(synthesize_model(path, small_shape(), o));
}

TEST(synth_routing, moe_synth_command_line) {
    const std::string path = temp_path("cli.gguf");
    auto r = test::run_tool("tools/moe-synth", {"-o", path, "--routing", "trained"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("--routing must be random or realistic"), std::string::npos) << r.out;
    r = test::run_tool("tools/moe-synth", {"-o", path, "--context-carry", "0.5"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("need --routing realistic"), std::string::npos) << r.out;
    r = test::run_tool("tools/moe-synth", {"-o", path, "--type", "Q8_0", "--layers", "1", "--embd", "64", "--heads", "2",
                                           "--kv-heads", "1", "--head-dim", "32", "--ff", "32", "--vocab", "300",
                                           "--routing", "realistic", "--token-clustering", "2"},
                       true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("token_clustering 2 is not in [0, 1]"), std::string::npos) << r.out;
    r = test::run_tool("tools/moe-synth", {"-o", path, "--type", "Q8_0", "--layers", "1", "--embd", "64", "--heads", "2",
                                           "--kv-heads", "1", "--head-dim", "32", "--ff", "32", "--vocab", "300",
                                           "--routing", "realistic"},
                       true);
    EXPECT_EQ(r.status, 0) << r.out;
    auto m = engine::model::load(path);
    ASSERT_TRUE(m) << m.error().message;
    EXPECT_EQ((*m)->hparams().n_vocab, 300);
}

}  // namespace
}  // namespace moed::tools
