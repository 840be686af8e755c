// Task profiles: TCESS and selection counts on a hand-made routing (each value worked out
// by hand), routing n-grams (order, keys, counts across batches and merges), the profile
// built from them, the file format (round trip bit for bit; truncation, a wrong magic,
// version or checksum, and out-of-range fields each give an error naming the file and the
// field), a profile of another model refused with both identities in the message, name
// rules, and the hot set and eviction scores derived from a profile.
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "scheduler/profile.h"
#include "scheduler/routing_stats.h"
#include "tests/support/test_paths.h"

namespace moed::scheduler {
namespace {

// 3 layers, 4 experts, top-2.
constexpr routing_shape k_shape{3, 4, 2};

// Feeds one batch of `n` tokens: probs [layer][token][expert], chosen [layer][token][slot].
void feed(routing_accumulator& acc, std::int64_t n, const std::vector<std::vector<float>>& probs,
          const std::vector<std::vector<std::int32_t>>& chosen) {
    for (std::uint32_t l = 0; l < acc.shape().n_layer; ++l) acc.add_layer(l, n, probs[l], chosen[l]);
}

// Two tokens through three layers.
routing_accumulator two_tokens() {
    routing_accumulator acc(k_shape);
    feed(acc, 2,
         {{0.5f, 0.3f, 0.1f, 0.1f, /**/ 0.1f, 0.2f, 0.3f, 0.4f},
          {0.6f, 0.1f, 0.2f, 0.1f, /**/ 0.25f, 0.25f, 0.1f, 0.4f},
          {0.1f, 0.1f, 0.1f, 0.7f, /**/ 0.7f, 0.1f, 0.1f, 0.1f}},
         {{0, 1, /**/ 3, 2}, {0, 2, /**/ 3, 0}, {3, 0, /**/ 0, 1}});
    return acc;
}

TEST(routing_accumulator, tcess_and_selection_by_hand) {
    const routing_accumulator acc = two_tokens();
    EXPECT_EQ(acc.tokens(), 2);
    const auto score = acc.score_sums();
    const auto sel = acc.selection_counts();
    // Layer 0: token 0 chose 0 (0.5) and 1 (0.3); token 1 chose 3 (0.4) and 2 (0.3).
    EXPECT_DOUBLE_EQ(score[0], 0.5);
    EXPECT_DOUBLE_EQ(score[1], 0.30000001192092896);  // 0.3f
    EXPECT_NEAR(score[2], 0.3, 1e-7);
    EXPECT_NEAR(score[3], 0.4, 1e-7);
    // Layer 1: expert 0 chosen by both (0.6 + 0.25), 2 by token 0, 3 by token 1, 1 by none.
    EXPECT_NEAR(score[4 + 0], 0.85, 1e-7);
    EXPECT_DOUBLE_EQ(score[4 + 1], 0.0);
    EXPECT_DOUBLE_EQ(sel[4 + 0], 2.0);
    EXPECT_DOUBLE_EQ(sel[4 + 1], 0.0);
    // Layer 2: token 0 chose 3 and 0, token 1 chose 0 and 1.
    EXPECT_NEAR(score[8 + 0], 0.1 + 0.7, 1e-7);
    EXPECT_NEAR(score[8 + 3], 0.7, 1e-7);
    EXPECT_DOUBLE_EQ(sel[8 + 2], 0.0);
    const std::vector<double> mean = acc.mean_scores();
    EXPECT_NEAR(mean[4], 0.425, 1e-7);
}

TEST(routing_accumulator, ngrams_are_top1_paths) {
    routing_accumulator acc = two_tokens();
    // Token 0: top-1 0, 0, 3; token 1: 3, 3, 0. With three layers one trigram each.
    const std::vector<ngram_count> want{{ngram_key(0, 0, 0, 3), 1}, {ngram_key(0, 3, 3, 0), 1}};
    EXPECT_EQ(acc.ngrams(), want);
    EXPECT_EQ(acc.ngram_order(), 3u);
    // A second batch of one token repeating token 0's path counts it twice.
    feed(acc, 1, {{0.9f, 0.05f, 0.03f, 0.02f}, {0.9f, 0.05f, 0.03f, 0.02f}, {0.02f, 0.03f, 0.05f, 0.9f}},
         {{0, 1}, {0, 1}, {3, 2}});
    EXPECT_EQ(acc.tokens(), 3);
    const std::vector<ngram_count> want2{{ngram_key(0, 0, 0, 3), 2}, {ngram_key(0, 3, 3, 0), 1}};
    EXPECT_EQ(acc.ngrams(), want2);

    // Merging adds everything.
    routing_accumulator other = two_tokens();
    other.merge(acc);
    EXPECT_EQ(other.tokens(), 5);
    const std::vector<ngram_count> want3{{ngram_key(0, 0, 0, 3), 3}, {ngram_key(0, 3, 3, 0), 2}};
    EXPECT_EQ(other.ngrams(), want3);
    EXPECT_NEAR(other.score_sums()[0], 0.5 + 0.5 + 0.9, 1e-6);
    other.clear();
    EXPECT_EQ(other.tokens(), 0);
    EXPECT_TRUE(other.ngrams().empty());
}

TEST(routing_accumulator, shallow_models_use_shorter_ngrams) {
    routing_accumulator acc(routing_shape{2, 4, 1});
    EXPECT_EQ(acc.ngram_order(), 2u);
    acc.add_layer(0, 1, std::vector<float>{0.1f, 0.7f, 0.1f, 0.1f}, std::vector<std::int32_t>{1});
    acc.add_layer(1, 1, std::vector<float>{0.1f, 0.1f, 0.1f, 0.7f}, std::vector<std::int32_t>{3});
    EXPECT_EQ(acc.ngrams(), (std::vector<ngram_count>{{ngram_key(0, 1, 3), 1}}));
}

TEST(routing_accumulator, many_tokens_compact_without_losing_counts) {
    // Enough tokens to trigger compaction several times; every path is one of 4.
    routing_accumulator acc(k_shape);
    const std::int64_t n = 1000;
    std::vector<float> probs(static_cast<std::size_t>(n) * 4, 0.25f);
    for (int batch = 0; batch < 20; ++batch) {
        std::vector<std::int32_t> chosen(static_cast<std::size_t>(n) * 2);
        for (std::int64_t t = 0; t < n; ++t) {
            chosen[t * 2] = static_cast<std::int32_t>(t % 4);
            chosen[t * 2 + 1] = static_cast<std::int32_t>((t + 1) % 4);
        }
        for (std::uint32_t l = 0; l < 3; ++l) acc.add_layer(l, n, probs, chosen);
    }
    const auto grams = acc.ngrams();
    ASSERT_EQ(grams.size(), 4u);
    for (std::uint32_t e = 0; e < 4; ++e) EXPECT_EQ(grams[e], (ngram_count{ngram_key(0, e, e, e), 5000})) << e;
}

profile sample_profile() {
    return make_profile("c-code", "qwen3moe:0123456789abcdef", "tinymoe", "test: 1 prompt", 1, 1700000000, two_tokens());
}

TEST(profile, made_from_statistics) {
    const profile p = sample_profile();
    EXPECT_EQ(p.n_tokens, 2);
    EXPECT_EQ(p.shape, k_shape);
    EXPECT_FLOAT_EQ(p.score[4], 0.425f);
    EXPECT_FLOAT_EQ(p.selection[4], 1.0f);
    EXPECT_FLOAT_EQ(p.selection[5], 0.0f);
    EXPECT_EQ(p.ngrams.size(), 2u);
    // Layer 1 by score: expert 0 (0.425), then 3 (0.2) and 2 (0.1).
    EXPECT_EQ(p.top_experts(1, 3), (std::vector<std::uint32_t>{0, 3, 2}));
    // Hot set: the top expert of each layer (layer 2: 0 with 0.4, 3 with 0.35).
    const std::vector<ExpertId> hot = profile_hot_set(p, 1);
    EXPECT_EQ(hot, (std::vector<ExpertId>{{0, 0}, {1, 0}, {2, 0}}));
    const std::vector<float> bias = profile_expert_scores(p);
    EXPECT_FLOAT_EQ(bias[4], 1.0f);
    EXPECT_FLOAT_EQ(bias[5], 0.0f);
    EXPECT_NEAR(bias[7], 0.2 / 0.425, 1e-6);
}

TEST(profile, file_round_trip) {
    const profile p = sample_profile();
    const std::string path = (test::temp_dir() / "c-code.profile").string();
    ASSERT_TRUE(write_profile(path, p));
    auto back = read_profile(path);
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->name, p.name);
    EXPECT_EQ(back->model_identity, p.model_identity);
    EXPECT_EQ(back->model_name, p.model_name);
    EXPECT_EQ(back->source, p.source);
    EXPECT_EQ(back->n_prompts, 1u);
    EXPECT_EQ(back->n_tokens, 2);
    EXPECT_EQ(back->created_unix, 1700000000);
    EXPECT_EQ(back->shape, p.shape);
    EXPECT_EQ(back->score, p.score);
    EXPECT_EQ(back->selection, p.selection);
    EXPECT_EQ(back->ngram_order, 3u);
    EXPECT_EQ(back->ngrams, p.ngrams);
    EXPECT_EQ(serialize_profile(*back), serialize_profile(p));
}

// Parses `bytes` and expects an error containing every piece of `parts`.
void expect_parse_error(const std::vector<std::byte>& bytes, const std::vector<std::string>& parts) {
    auto r = parse_profile(bytes, "/state/profiles/x.profile");
    ASSERT_FALSE(r) << "parsed a broken profile";
    for (const std::string& part : parts) EXPECT_NE(r.error().message.find(part), std::string::npos) << r.error().message;
}

TEST(profile, corrupt_files_name_the_field) {
    const std::vector<std::byte> good = serialize_profile(sample_profile());
    ASSERT_TRUE(parse_profile(good, "x"));

    expect_parse_error({}, {"profile file '/state/profiles/x.profile'", "field 'magic'"});
    std::vector<std::byte> b = good;
    b[0] = std::byte{'X'};
    expect_parse_error(b, {"field 'magic'", "not a moed profile"});

    b = good;
    b[8] = std::byte{7};  // version 7
    expect_parse_error(b, {"field 'version'", "version 7 is not supported"});

    // Truncated: the checksum no longer matches (it is checked first).
    b.assign(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 2));
    expect_parse_error(b, {"field 'checksum'"});
    b.assign(good.begin(), good.begin() + 14);
    expect_parse_error(b, {"'/state/profiles/x.profile'", "truncated"});

    // One flipped byte in the middle.
    b = good;
    b[good.size() / 2] ^= std::byte{0x40};
    expect_parse_error(b, {"field 'checksum'", "corrupt"});
}

TEST(profile, out_of_range_values_are_refused) {
    // Written with a valid checksum, so the field checks themselves are reached.
    profile p = sample_profile();
    p.score[5] = std::numeric_limits<float>::quiet_NaN();
    expect_parse_error(serialize_profile(p), {"field 'score'", "layer 1 expert 1", "outside [0, 1]"});

    p = sample_profile();
    p.selection[0] = 0.0f;  // layer 0 no longer sums to 2
    expect_parse_error(serialize_profile(p), {"field 'selection'", "layer 0 sums to"});

    p = sample_profile();
    p.shape.n_expert_used = 9;
    expect_parse_error(serialize_profile(p), {"field 'n_expert_used'", "9"});

    p = sample_profile();
    p.name = "../etc";
    expect_parse_error(serialize_profile(p), {"field 'name'"});

    p = sample_profile();
    p.n_tokens = 0;
    expect_parse_error(serialize_profile(p), {"field 'n_tokens'"});

    p = sample_profile();
    std::swap(p.ngrams[0], p.ngrams[1]);
    expect_parse_error(serialize_profile(p), {"field 'ngrams'", "out of order"});

    p = sample_profile();
    p.ngrams[1].key = ngram_key(0, 3, 9, 0);
    expect_parse_error(serialize_profile(p), {"field 'ngrams'", "expert 9"});

    p = sample_profile();
    p.ngram_order = 2;
    expect_parse_error(serialize_profile(p), {"field 'ngram_order'"});

    p = sample_profile();
    p.score[5] = 0.1f;  // layer 1 expert 1: never chosen (selection 0), yet scored
    expect_parse_error(serialize_profile(p), {"field 'score'", "layer 1 expert 1", "exceeds its selection"});
}

TEST(profile, other_model_is_refused_with_both_identities) {
    const profile p = sample_profile();
    auto r = check_profile_model(p, "/state/profiles/c-code.profile", "qwen3moe:fedcba9876543210", k_shape);
    ASSERT_FALSE(r);
    const std::string& m = r.error().message;
    EXPECT_NE(m.find("'/state/profiles/c-code.profile'"), std::string::npos) << m;
    EXPECT_NE(m.find("qwen3moe:0123456789abcdef"), std::string::npos) << m;
    EXPECT_NE(m.find("qwen3moe:fedcba9876543210"), std::string::npos) << m;
    EXPECT_TRUE(check_profile_model(p, "x", "qwen3moe:0123456789abcdef", k_shape));
    auto shape = check_profile_model(p, "x", "qwen3moe:0123456789abcdef", routing_shape{3, 8, 2});
    ASSERT_FALSE(shape);
    EXPECT_NE(shape.error().message.find("3 layers x 4 experts"), std::string::npos) << shape.error().message;
}

TEST(profile, names) {
    EXPECT_TRUE(check_profile_name("c"));
    EXPECT_TRUE(check_profile_name("python-3.12_v2"));
    EXPECT_TRUE(check_profile_name(std::string(64, 'a')));
    EXPECT_FALSE(check_profile_name(""));
    EXPECT_FALSE(check_profile_name(std::string(65, 'a')));
    EXPECT_FALSE(check_profile_name("a/b"));
    EXPECT_FALSE(check_profile_name("a b"));
    EXPECT_FALSE(check_profile_name(".hidden"));
    EXPECT_FALSE(check_profile_name(".."));
    auto r = check_profile_name("caf\xc3\xa9");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("0xc3"), std::string::npos) << r.error().message;
}

TEST(profile, read_errors_name_the_path) {
    auto missing = read_profile((test::temp_dir() / "none.profile").string());
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, errc::not_found);
    EXPECT_NE(missing.error().message.find("none.profile"), std::string::npos);
    const auto junk = test::temp_dir() / "junk.profile";
    std::ofstream(junk) << "hello";
    auto bad = read_profile(junk.string());
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find(junk.string()), std::string::npos) << bad.error().message;
}

}  // namespace
}  // namespace moed::scheduler
