// Checks token masking for response_format (engine/json_constraint.h) on real vocabularies:
// the bundled tinymoe model's (4096 byte-level BPE tokens) and Qwen3's (151k tokens).
// - the trie walk's mask equals asking allows() of every token, at states along random
//   walks (special tokens never allowed; end of generation only once the document is
//   complete);
// - sampling with random logits through sample_constrained (greedy and seeded sampling)
//   gives documents that nlohmann::json parses and, for a schema, that the independent
//   validator accepts, and always complete within max_tokens, down to the smallest budget
//   the grammar allows.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "engine/json_constraint.h"
#include "storage/gguf.h"
#include "tests/support/json_schema_check.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

using json = nlohmann::json;

std::unique_ptr<tokenizer> load(const std::string& path) {
    auto file = storage::gguf_file::open(path);
    EXPECT_TRUE(file) << file.error().message;
    if (!file) return nullptr;
    auto tok = tokenizer::from_gguf(**file);
    EXPECT_TRUE(tok) << tok.error().message;
    return tok ? std::move(*tok) : nullptr;
}

const tokenizer& tinymoe() {
    static const std::unique_ptr<tokenizer> t = load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
    return *t;
}
const tokenizer& qwen3() {
    static const std::unique_ptr<tokenizer> t = load(test::models_dir() + "/tokenizer/qwen3-vocab.gguf");
    return *t;
}

const char* const schema_text = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "mood": {"enum": ["happy", "sad"]},
    "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 4},
    "pet": {"type": ["object", "null"], "properties": {"kind": {"type": "string"}}, "required": ["kind"],
            "additionalProperties": false}
  },
  "required": ["name", "age", "mood"],
  "additionalProperties": false
})";

struct outcome {
    std::string text;
    bool ended_by_eog = false;
    bool complete = false;
    std::int32_t tokens = 0;
};

// Generates with random logits (some runs skewed toward tokens of structure, so documents
// end as well as run long).
outcome generate(const json_grammar& g, const json_token_index& index, const tokenizer& vocab, std::int32_t max_tokens,
                 std::uint64_t seed, float temperature) {
    json_constraint c(g, index, max_tokens);
    sampling_params p;
    p.temperature = temperature;
    p.seed = seed;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    sampler smp(p);
    std::mt19937 rng(static_cast<std::uint32_t>(seed));
    std::normal_distribution<float> noise(0.0f, 3.0f);
    std::vector<float> logits(static_cast<std::size_t>(vocab.n_vocab()));
    std::vector<float> scratch;
    std::vector<token_id> history;
    outcome out;
    for (std::int32_t i = 0; i < max_tokens; ++i) {
        for (float& l : logits) l = noise(rng);
        const token_id t = sample_constrained(smp, &c, logits, history, scratch);
        EXPECT_GE(t, 0) << "no token allowed after " << out.text;
        if (t < 0) break;
        EXPECT_TRUE(c.allows(t));
        c.accept(t);
        history.push_back(t);
        ++out.tokens;
        if (vocab.is_eog(t)) {
            out.ended_by_eog = true;
            break;
        }
        out.text += vocab.token_bytes(t);
        if (c.closed()) break;
    }
    out.complete = c.complete();
    return out;
}

void check_mask_matches_allows(const tokenizer& vocab, const json_grammar& g, std::uint64_t seed) {
    const json_token_index index(vocab);
    double mask_seconds = 0.0;
    int masks = 0;
    EXPECT_TRUE(index.single_bytes());
    json_constraint c(g, index, 64);
    std::mt19937 rng(static_cast<std::uint32_t>(seed));
    std::vector<float> logits(static_cast<std::size_t>(vocab.n_vocab()));
    for (int step = 0; step < 24 && !c.closed(); ++step) {
        std::fill(logits.begin(), logits.end(), 0.0f);
        const auto start = std::chrono::steady_clock::now();
        ASSERT_TRUE(c.mask(logits));
        mask_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        ++masks;
        std::vector<token_id> allowed;
        for (token_id t = 0; t < vocab.n_vocab(); ++t) {
            const bool masked_in = logits[static_cast<std::size_t>(t)] == 0.0f;
            ASSERT_EQ(masked_in, c.allows(t)) << "token " << t << " '" << vocab.token_bytes(t) << "' at step " << step;
            if (masked_in) {
                allowed.push_back(t);
                EXPECT_TRUE(!vocab.is_special(t) || (vocab.is_eog(t) && c.complete())) << t;
            }
        }
        ASSERT_FALSE(allowed.empty());
        c.accept(allowed[rng() % allowed.size()]);
    }
    // Reported, never asserted: tests do not judge wall time.
    std::printf("vocabulary of %d tokens: %.3f ms per full mask (%d masks)\n", vocab.n_vocab(),
                1e3 * mask_seconds / std::max(masks, 1), masks);
}

TEST(json_constraint, mask_equals_allows_on_real_vocabularies) {
    const json_grammar any = json_grammar::any_object();
    auto schema = json_grammar::from_schema(json::parse(schema_text));
    ASSERT_TRUE(schema) << schema.error().message;
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
        check_mask_matches_allows(tinymoe(), any, seed);
        check_mask_matches_allows(tinymoe(), *schema, seed);
    }
    check_mask_matches_allows(qwen3(), any, 9);
    check_mask_matches_allows(qwen3(), *schema, 9);
}

TEST(json_constraint, sampled_documents_parse_and_fit_the_budget) {
    const json schema_json = json::parse(schema_text);
    auto schema = json_grammar::from_schema(schema_json);
    ASSERT_TRUE(schema) << schema.error().message;
    const json_grammar any = json_grammar::any_object();
    for (const tokenizer* vocab : {&tinymoe(), &qwen3()}) {
        const json_token_index index(*vocab);
        // Random logits almost never favour a valid token, so nearly every step walks the
        // trie: fewer runs on the large vocabulary.
        const std::uint64_t seeds = vocab->n_vocab() > 10000 ? 3 : 12;
        for (std::uint64_t seed = 1; seed <= seeds; ++seed) {
            for (std::int32_t budget : {2, 5, 16, 60}) {
                const float temperature = seed % 3 == 0 ? 0.0f : 1.0f;
                const outcome a = generate(any, index, *vocab, budget, seed, temperature);
                EXPECT_TRUE(a.complete) << a.text;
                EXPECT_LE(a.tokens, budget);
                EXPECT_TRUE(json::accept(a.text)) << a.text;
                EXPECT_TRUE(json::parse(a.text).is_object()) << a.text;

                const json_recognizer rec(*schema);
                const auto smallest = static_cast<std::int32_t>(rec.min_bytes_to_close(rec.initial()));
                const outcome b = generate(*schema, index, *vocab, std::max(budget, smallest), seed, temperature);
                EXPECT_TRUE(b.complete) << b.text;
                json doc;
                ASSERT_NO_THROW(doc = json::parse(b.text)) << b.text;
                EXPECT_EQ(test::schema_violation(doc, schema_json), "") << b.text;
            }
        }
    }
}

}  // namespace
}  // namespace moed::engine
