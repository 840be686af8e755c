// Tokenizer tests: differential against llama.cpp, plus the contract around it.
// - The real Qwen3 vocabulary (pre = qwen2) must give llama.cpp's ids for all 34 cases in
//   models/tokenizer/qwen3-tokenizer-cases.json, with and without special-token parsing.
// - The tinymoe vocabulary (pre = gpt-2) must give the prompt_tokens recorded in both golden
//   files for every prompt.
// - decode(encode(x)) == x on all of those strings; utf8_stream repairs and joins bytes split
//   across tokens; special ids, EOG and token_bytes follow llama.cpp's rules.
// - Small vocabularies written with storage::gguf_writer check merge order, special-token
//   splitting, the unknown-byte fallback, ignore_merges, and that bad files are refused with
//   an error naming the file, the key and the value (wrong model, unknown pre, inconsistent
//   arrays).
// - SentencePiece: the real Llama-2 / Mixtral vocabulary's special ids and defaults, byte
//   tokens streamed through utf8_stream; small vocabularies check merging by score (leftmost
//   on ties), the space prefix, byte fallback and the unknown token, and bad score arrays.
//   (llama.cpp's ids on many strings: tokenizer_fixture_test.cpp.)
// - The pre-tokenizer alone (no file) splits as llama.cpp's splitters do, including its
//   quirks (U+0085 is whitespace; invalid UTF-8 becomes U+FFFD).
#include <chrono>
#include <cstdio>
#include <thread>
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/tokenizer.h"
#include "engine/tokenizer_pretok.h"
#include "storage/gguf.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

nlohmann::json load_json(const std::string& path) {
    std::ifstream in(path);
    EXPECT_TRUE(in.good()) << "missing " << path;
    return nlohmann::json::parse(in);
}

std::unique_ptr<tokenizer> load_tokenizer(const std::string& path) {
    auto file = storage::gguf_file::open(path);
    EXPECT_TRUE(file) << file.error().message;
    if (!file) return nullptr;
    const auto start = std::chrono::steady_clock::now();
    auto tok = tokenizer::from_gguf(**file);
    const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(tok) << tok.error().message;
    if (!tok) return nullptr;
    // Reported, never asserted: tests do not judge wall time.
    std::cout << "[ info ] loaded " << path << " (" << (*tok)->n_vocab() << " tokens) in " << ms << " ms\n";
    return std::move(tok).value();
}

const tokenizer& qwen3() {
    static const std::unique_ptr<tokenizer> tok = load_tokenizer(test::models_dir() + "/tokenizer/qwen3-vocab.gguf");
    MOED_ASSERT(tok != nullptr);
    return *tok;
}

const tokenizer& tinymoe() {
    static const std::unique_ptr<tokenizer> tok =
        load_tokenizer(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
    MOED_ASSERT(tok != nullptr);
    return *tok;
}

std::string show(const std::vector<token_id>& ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
    return s + "]";
}

// --- llama.cpp differential: Qwen3 vocabulary ---

TEST(TokenizerQwen3, AllCasesMatchLlamaCpp) {
    const tokenizer& tok = qwen3();
    const auto cases = load_json(test::models_dir() + "/tokenizer/qwen3-tokenizer-cases.json")["cases"];
    ASSERT_EQ(cases.size(), 34u);
    int plain_ok = 0;
    int special_ok = 0;
    for (const auto& c : cases) {
        const std::string text = c["text"];
        const auto expected = c["ids"].get<std::vector<token_id>>();
        const auto expected_special = c["ids_parse_special"].get<std::vector<token_id>>();
        const auto got = tok.encode(text, false);
        const auto got_special = tok.encode(text, true);
        EXPECT_EQ(got, expected) << "text: " << text << "\n got " << show(got) << "\nwant " << show(expected);
        EXPECT_EQ(got_special, expected_special)
            << "parse_special, text: " << text << "\n got " << show(got_special) << "\nwant " << show(expected_special);
        plain_ok += got == expected;
        special_ok += got_special == expected_special;
    }
    std::cout << "[ info ] qwen3 cases: " << plain_ok << "/" << cases.size() << " without special parsing, "
              << special_ok << "/" << cases.size() << " with\n";
}

TEST(TokenizerQwen3, RoundTrips) {
    const tokenizer& tok = qwen3();
    const auto cases = load_json(test::models_dir() + "/tokenizer/qwen3-tokenizer-cases.json")["cases"];
    for (const auto& c : cases) {
        const std::string text = c["text"];
        EXPECT_EQ(tok.decode(tok.encode(text, false)), text);
        // Parsed control tokens come back only when asked for.
        EXPECT_EQ(tok.decode(tok.encode(text, true), true), text);
    }
}

TEST(TokenizerQwen3, SpecialTokens) {
    const tokenizer& tok = qwen3();
    EXPECT_EQ(tok.n_vocab(), 151936);
    EXPECT_EQ(tok.bos_id(), 151643);
    EXPECT_EQ(tok.eos_id(), 151645);
    EXPECT_FALSE(tok.add_bos());
    EXPECT_EQ(tok.find_token("<|im_start|>"), 151644);
    EXPECT_EQ(tok.find_token("<think>"), 151667);
    EXPECT_EQ(tok.find_token("no such token text"), -1);
    // EOG as llama.cpp lists it: eos, the EOG-looking texts, and the FIM pad/repo/sep tokens.
    for (const char* t : {"<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}) {
        EXPECT_TRUE(tok.is_eog(tok.find_token(t))) << t;
    }
    for (const char* t : {"<|im_start|>", "<think>", "<|fim_prefix|>", "Hello"}) {
        EXPECT_FALSE(tok.is_eog(tok.find_token(t))) << t;
    }
    EXPECT_FALSE(tok.is_eog(-1));
    EXPECT_FALSE(tok.is_eog(tok.n_vocab()));

    // Control tokens render only with special = true; user-defined ones always.
    const token_id im_start = tok.find_token("<|im_start|>");
    EXPECT_EQ(tok.token_bytes(im_start), "");
    EXPECT_EQ(tok.token_bytes(im_start, true), "<|im_start|>");
    EXPECT_EQ(tok.token_bytes(tok.find_token("<think>")), "<think>");
    // Unused padding tokens render as nothing; out of range ids too.
    EXPECT_EQ(tok.token_bytes(151700, true), "");
    EXPECT_EQ(tok.token_bytes(-5, true), "");
    EXPECT_EQ(tok.token_bytes(198), "\n");
    EXPECT_EQ(tok.token_bytes(220), " ");

    // User-defined tokens split the text even without parse_special; control ones only with.
    const auto think = tok.encode("a<think>b", false);
    EXPECT_EQ(think, (std::vector<token_id>{64, 151667, 65}));
    const auto no_split = tok.encode("<|im_end|>", false);
    EXPECT_GT(no_split.size(), 1u);
    EXPECT_EQ(tok.encode("<|im_end|>", true), (std::vector<token_id>{151645}));
    EXPECT_TRUE(tok.encode("", true).empty());
}

TEST(TokenizerQwen3, StreamJoinsCharactersSplitAcrossTokens) {
    const tokenizer& tok = qwen3();
    const std::string text = "🚀 rocket 😶\u200d🌫️ zwj 👩\u200d👩\u200d👧\u200d👦 family ✅ 🇯🇵 flag, नमस्ते";
    const auto ids = tok.encode(text, false);
    utf8_stream stream;
    std::string out;
    bool some_token_split_a_character = false;
    for (const token_id id : ids) {
        const std::string bytes = tok.token_bytes(id);
        const std::string part = stream.push(bytes);
        some_token_split_a_character |= part.size() != bytes.size();
        out += part;
    }
    out += stream.finish();
    EXPECT_EQ(out, text);
    EXPECT_TRUE(some_token_split_a_character) << "the case should exercise byte tokens";
}

TEST(TokenizerQwen3, InvalidUtf8EncodesAsReplacementCharacters) {
    const tokenizer& tok = qwen3();
    // llama.cpp decodes invalid bytes to U+FFFD before splitting; so do we.
    const auto ids = tok.encode("a\xff" "b\xc3", false);
    EXPECT_EQ(tok.decode(ids), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
    EXPECT_EQ(ids, tok.encode("a\xEF\xBF\xBD" "b\xEF\xBF\xBD", false));
    // Overlong '/' becomes '/', a surrogate stays encoded as such (as llama.cpp does).
    EXPECT_EQ(tok.encode("x\xC0\xAFy", false), tok.encode("x/y", false));
    EXPECT_EQ(tok.decode(tok.encode("x\xED\xA0\x80y", false)), "x\xED\xA0\x80y");
}

TEST(TokenizerQwen3, ConcurrentEncodesAgree) {
    // The tokenizer is shared by request threads; PCRE2 match state is per thread.
    const tokenizer& tok = qwen3();
    const auto cases = load_json(test::models_dir() + "/tokenizer/qwen3-tokenizer-cases.json")["cases"];
    std::vector<std::string> texts;
    for (const auto& c : cases) texts.push_back(c["text"]);
    std::vector<std::vector<token_id>> expected;
    for (const auto& t : texts) expected.push_back(tok.encode(t, true));
    constexpr int n_threads = 4;
    std::vector<int> mismatches(n_threads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; ++t) {
        threads.emplace_back([&, t] {
            for (int round = 0; round < 20; ++round) {
                for (std::size_t i = 0; i < texts.size(); ++i) mismatches[t] += tok.encode(texts[i], true) != expected[i];
            }
        });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < n_threads; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST(TokenizerQwen3, LongRunsStayLinear) {
    // Long whitespace, letter and punctuation runs: one word each, no regex blow-up.
    const tokenizer& tok = qwen3();
    const std::string spaces(20000, ' ');
    const std::string text = "x" + spaces + "y\n" + std::string(20000, 'a') + std::string(20000, '!');
    const auto ids = tok.encode(text, false);
    EXPECT_EQ(tok.decode(ids), text);
}

// --- llama.cpp differential: tinymoe vocabulary (pre = gpt-2) ---

void check_golden_prompts(const std::string& golden) {
    const tokenizer& tok = tinymoe();
    const auto cases = load_json(test::golden_file(golden))["cases"];
    ASSERT_FALSE(cases.empty());
    int ok = 0;
    for (const auto& c : cases) {
        const std::string prompt = c["prompt"];
        const auto expected = c["prompt_tokens"].get<std::vector<token_id>>();
        for (const bool special : {false, true}) {
            const auto got = tok.encode(prompt, special);
            EXPECT_EQ(got, expected) << golden << " parse_special=" << special << " prompt: " << prompt;
            ok += got == expected;
        }
        EXPECT_EQ(tok.decode(expected), prompt);
    }
    std::cout << "[ info ] " << golden << ": " << ok << "/" << 2 * cases.size()
              << " prompt encodings match (both modes)\n";
}

TEST(TokenizerTinymoe, GoldenPromptsQ4KM) { check_golden_prompts("tinymoe-qwen3moe-Q4_K_M"); }
TEST(TokenizerTinymoe, GoldenPromptsF16) { check_golden_prompts("tinymoe-qwen3moe-F16"); }

TEST(TokenizerTinymoe, SpecialIds) {
    const tokenizer& tok = tinymoe();
    EXPECT_EQ(tok.n_vocab(), 4096);
    EXPECT_EQ(tok.eos_id(), 4094);
    EXPECT_TRUE(tok.is_eog(4094));
    EXPECT_FALSE(tok.is_eog(4095));
    EXPECT_EQ(tok.encode("x<|endoftext|>", true).back(), 4094);
}

// --- utf8_stream ---

TEST(Utf8Stream, KeepsIncompleteSequencesForTheNextPush) {
    utf8_stream s;
    const std::string euro = "\xE2\x82\xAC";   // U+20AC, 3 bytes
    const std::string rocket = "\xF0\x9F\x9A\x80";  // U+1F680, 4 bytes
    EXPECT_EQ(s.push("a" + euro.substr(0, 1)), "a");
    EXPECT_EQ(s.push(euro.substr(1, 1)), "");
    EXPECT_EQ(s.push(euro.substr(2) + rocket.substr(0, 2)), euro);
    EXPECT_EQ(s.push(rocket.substr(2, 1)), "");
    EXPECT_EQ(s.push(rocket.substr(3)), rocket);
    EXPECT_EQ(s.finish(), "");
}

TEST(Utf8Stream, ReplacesInvalidBytes) {
    const std::string fffd = "\xEF\xBF\xBD";
    utf8_stream s;
    // A stray continuation byte, a byte that never starts a sequence, and a broken sequence.
    EXPECT_EQ(s.push("x\x80y\xFFz"), "x" + fffd + "y" + fffd + "z");
    EXPECT_EQ(s.push("\xE2\x82"), "");
    EXPECT_EQ(s.push("A"), fffd + fffd + "A");  // the prefix can never complete
    // Overlong and surrogate forms are not well-formed.
    EXPECT_EQ(s.push("\xC0\xAF"), fffd + fffd);
    EXPECT_EQ(s.push("\xED\xA0\x80"), fffd + fffd + fffd);
    EXPECT_EQ(s.push("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);
    // An incomplete tail at the end becomes one U+FFFD per byte.
    EXPECT_EQ(s.push("ok\xF0\x9F"), "ok");
    EXPECT_EQ(s.finish(), fffd + fffd);
    EXPECT_EQ(s.finish(), "");
    EXPECT_EQ(s.push("\xC3\xA9"), "\xC3\xA9");
}

// --- the pre-tokenizer alone ---

std::vector<std::string> words(const pre_tokenizer& pre, std::string_view text) {
    pretok_scratch scratch;
    const std::string_view bytes = pre.split(text, scratch);
    std::vector<std::string> out;
    for (const auto w : scratch.words) out.emplace_back(bytes.substr(w.begin, w.end - w.begin));
    return out;
}

using strings = std::vector<std::string>;

TEST(PreTokenizer, Qwen2) {
    auto pre = pre_tokenizer::create("qwen2");
    ASSERT_TRUE(pre) << pre.error().message;
    EXPECT_EQ(words(**pre, "Hello  world!"), (strings{"Hello", " ", " world", "!"}));
    EXPECT_EQ(words(**pre, "   leading"), (strings{"  ", " leading"}));
    EXPECT_EQ(words(**pre, "trailing   "), (strings{"trailing", "   "}));
    EXPECT_EQ(words(**pre, "DON'T 12"), (strings{"DON", "'T", " ", "1", "2"}));
    EXPECT_EQ(words(**pre, "a \n\n b"), (strings{"a", " \n\n", " b"}));
    EXPECT_EQ(words(**pre, "x:=\r\n"), (strings{"x", ":=\r\n"}));
    // U+0085 (NEL) is whitespace to llama.cpp, though not to PCRE2's \s.
    EXPECT_EQ(words(**pre, "a\xC2\x85\xC2\x85" "b"), (strings{"a", "\xC2\x85", "\xC2\x85" "b"}));
    EXPECT_TRUE(words(**pre, "").empty());
    // Invalid bytes become U+FFFD before splitting.
    EXPECT_EQ(words(**pre, "\xFF" "a"), (strings{"\xEF\xBF\xBD" "a"}));
}

TEST(PreTokenizer, Gpt2) {
    auto pre = pre_tokenizer::create("gpt-2");
    ASSERT_TRUE(pre) << pre.error().message;
    EXPECT_EQ(words(**pre, "I'm 1234 ok?!  x\ty"), (strings{"I", "'m", " 1234", " ok", "?!", " ", " x", "\t", "y"}));
    EXPECT_EQ(words(**pre, "DON'T"), (strings{"DON", "'", "T"}));  // contractions are lower case only
    EXPECT_FALSE((*pre)->ignore_merges());
}

TEST(PreTokenizer, Llama3AndDeepseek3) {
    auto llama3 = pre_tokenizer::create("llama-bpe");
    ASSERT_TRUE(llama3) << llama3.error().message;
    EXPECT_TRUE((*llama3)->ignore_merges());
    EXPECT_TRUE((*llama3)->add_bos_default());
    EXPECT_EQ(words(**llama3, "1234567 abc"), (strings{"123", "456", "7", " abc"}));
    auto ds3 = pre_tokenizer::create("deepseek-v3");
    ASSERT_TRUE(ds3) << ds3.error().message;
    EXPECT_EQ(words(**ds3, "12345 .abc 你好x"), (strings{"123", "45", " .", "abc", " ", "你好", "x"}));
    // llama.cpp's \p{S} misses '~' on this path: it prefixes letters, never joins punctuation.
    EXPECT_EQ(words(**ds3, "~~ab"), (strings{"~", "~ab"}));
}

TEST(PreTokenizer, NamesOfTheMoeModels) {
    // Readable examples of what llama.cpp's splitters make (all of it: tokenizer_fixture_test).
    auto gpt4o = pre_tokenizer::create("gpt-4o");  // gpt-oss
    ASSERT_TRUE(gpt4o) << gpt4o.error().message;
    EXPECT_EQ(words(**gpt4o, "HelloWorld iPhone's XMLHttp"), (strings{"Hello", "World", " i", "Phone's", " XMLHttp"}));
    EXPECT_EQ(words(**gpt4o, "a//b\n\n"), (strings{"a", "//", "b", "\n\n"}));
    auto kimi = pre_tokenizer::create("kimi-k2");
    ASSERT_TRUE(kimi) << kimi.error().message;
    EXPECT_EQ(words(**kimi, "HelloWorld中文abc's 12345"), (strings{"HelloWorld", "中文", "abc's", " ", "123", "45"}));
    auto ds_llm = pre_tokenizer::create("deepseek-llm");  // DeepSeek-V2 / V2-Lite
    ASSERT_TRUE(ds_llm) << ds_llm.error().message;
    EXPECT_EQ(words(**ds_llm, "Hi 你好 12 ,x  "), (strings{"Hi", " ", "你好", " ", "12", " ,", "x", "  "}));
    auto ds_coder = pre_tokenizer::create("deepseek-coder");
    ASSERT_TRUE(ds_coder) << ds_coder.error().message;
    EXPECT_EQ(words(**ds_coder, "Hi, 你好 12"), (strings{"Hi", ",", " ", "你好", " ", "1", "2"}));
    auto glm4 = pre_tokenizer::create("glm4");  // GLM-4.5 / 4.6: llama3's splits, merges always
    ASSERT_TRUE(glm4) << glm4.error().message;
    EXPECT_FALSE((*glm4)->ignore_merges());
    EXPECT_FALSE((*glm4)->add_bos_default());
    EXPECT_EQ(words(**glm4, "1234567 abc"), (strings{"123", "456", "7", " abc"}));
}

TEST(PreTokenizer, LongRunsSplitCompletely) {
    // Long runs of one class (where a backtracking expression could go quadratic): each
    // pre-tokenizer must finish and its words must cover the text exactly.
    std::string text = "x" + std::string(20000, ' ') + "y\n" + std::string(20000, 'A') + std::string(20000, 'a');
    for (int i = 0; i < 5000; ++i) text += "\xC3\xA9";  // é: a letter of both cases to gpt-4o
    text += std::string(20000, '!') + std::string(20000, '7') + std::string(20000, ' ');
    for (const char* name : {"gpt-4o", "kimi-k2", "deepseek-llm", "deepseek-coder", "glm4"}) {
        auto pre = pre_tokenizer::create(name);
        ASSERT_TRUE(pre) << pre.error().message;
        pretok_scratch scratch;
        const std::string_view bytes = (*pre)->split(text, scratch);
        std::string joined;
        for (const auto w : scratch.words) joined.append(bytes.substr(w.begin, w.end - w.begin));
        EXPECT_EQ(joined, text) << name;
    }
}

TEST(PreTokenizer, UnknownNameIsUnsupported) {
    auto pre = pre_tokenizer::create("no-such-pre");
    ASSERT_FALSE(pre);
    EXPECT_EQ(pre.error().code, errc::unsupported);
    EXPECT_NE(pre.error().message.find("no-such-pre"), std::string::npos);
}

// --- small vocabularies written to GGUF ---

// A byte-level vocabulary: the 256 byte tokens, then `extra` tokens, with the given merges.
struct vocab_spec {
    std::string model = "gpt2";
    std::string pre = "qwen2";
    std::vector<std::string> extra;           // appended after the 256 byte tokens
    std::vector<std::int32_t> extra_types;    // types for `extra` (default normal)
    std::vector<std::string> merges;
    std::vector<std::uint8_t> drop_bytes;     // byte tokens to leave out of the vocabulary
    int type_count_delta = 0;                 // make token_type longer/shorter than tokens
    std::int64_t eos = -1;
    bool write_merges = true;
};

std::string byte_text(std::uint8_t b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    static const auto shifted = [] {
        std::array<std::uint32_t, 256> cps{};
        std::uint32_t extra = 0;
        for (unsigned i = 0; i < 256; ++i) {
            const bool p = (i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
            cps[i] = p ? i : 256 + extra++;
        }
        return cps;
    }();
    const std::uint32_t cp = printable ? b : shifted[b];
    std::string s;
    if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
    } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return s;
}

result<std::unique_ptr<tokenizer>> build(const vocab_spec& spec, const std::string& name) {
    std::vector<std::string> tokens;
    std::vector<std::int32_t> types;
    for (unsigned b = 0; b < 256; ++b) {
        if (std::find(spec.drop_bytes.begin(), spec.drop_bytes.end(), b) != spec.drop_bytes.end()) continue;
        tokens.push_back(byte_text(static_cast<std::uint8_t>(b)));
        types.push_back(1);
    }
    for (std::size_t i = 0; i < spec.extra.size(); ++i) {
        tokens.push_back(spec.extra[i]);
        types.push_back(i < spec.extra_types.size() ? spec.extra_types[i] : 1);
    }
    if (spec.type_count_delta < 0) types.resize(types.size() - 1);
    if (spec.type_count_delta > 0) types.push_back(1);
    storage::gguf_writer w;
    w.set_string("general.architecture", "qwen3moe");
    w.set_string("tokenizer.ggml.model", spec.model);
    w.set_string("tokenizer.ggml.pre", spec.pre);
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    if (spec.write_merges) w.set_string_array("tokenizer.ggml.merges", spec.merges);
    if (spec.eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(spec.eos));
    const std::string path = (test::temp_dir() / (name + ".gguf")).string();
    auto written = w.write(path);
    if (!written) return unexpected(std::move(written).error());
    auto file = storage::gguf_file::open(path);
    if (!file) return unexpected(std::move(file).error());
    return tokenizer::from_gguf(**file);
}

TEST(TokenizerSynthetic, MergesLowestRankFirstThenLeftmost) {
    vocab_spec spec;
    // 256 "ab", 257 "bc", 258 "abc", 259 "aa", 260 "aaa"
    spec.extra = {"ab", "bc", "abc", "aa", "aaa"};
    spec.merges = {"b c", "a b", "a bc", "a a", "aa a"};
    auto tok = build(spec, "merge_order");
    ASSERT_TRUE(tok) << tok.error().message;
    // "b c" has the lower rank, so "abc" is a + bc -> abc, never ab + c.
    EXPECT_EQ((*tok)->encode("abc", false), (std::vector<token_id>{258}));
    EXPECT_EQ((*tok)->encode("abx", false), (std::vector<token_id>{256, 'x'}));
    // Equal ranks: the leftmost "a a" merges first; the second "a a" (rank 3) then beats
    // "aa a" (rank 4), so "aaaa" is aa + aa, never aaa + a.
    EXPECT_EQ((*tok)->encode("aaaa", false), (std::vector<token_id>{259, 259}));
    EXPECT_EQ((*tok)->encode("aaa", false), (std::vector<token_id>{260}));
    EXPECT_EQ((*tok)->decode((*tok)->encode("aaaa abc", false)), "aaaa abc");
}

TEST(TokenizerSynthetic, SpecialTokensSplitLongestFirst) {
    vocab_spec spec;
    // 256 "<a>" control, 257 "<a><b>" control, 258 "[u]" user-defined
    spec.extra = {"<a>", "<a><b>", "[u]"};
    spec.extra_types = {3, 3, 4};
    auto tok = build(spec, "specials");
    ASSERT_TRUE(tok) << tok.error().message;
    const auto ids = (*tok)->encode("x<a><b><a>[u]", true);
    EXPECT_EQ(ids, (std::vector<token_id>{'x', 257, 256, 258}));
    // Without parse_special, control tokens are text; user-defined still split.
    const auto plain = (*tok)->encode("<a>[u]", false);
    ASSERT_FALSE(plain.empty());
    EXPECT_EQ(plain.back(), 258);
    EXPECT_EQ((*tok)->decode(plain), "<a>[u]");
    EXPECT_EQ((*tok)->decode(ids), "x[u]");
    EXPECT_EQ((*tok)->decode(ids, true), "x<a><b><a>[u]");
}

TEST(TokenizerSynthetic, BytesMissingFromTheVocabularyAreDropped) {
    vocab_spec spec;
    spec.drop_bytes = {'q'};
    auto tok = build(spec, "missing_byte");
    ASSERT_TRUE(tok) << tok.error().message;
    // llama.cpp drops a symbol that is no token (its single-byte fallback finds nothing).
    const auto ids = (*tok)->encode("aqb", false);
    EXPECT_EQ((*tok)->decode(ids), "ab");
}

TEST(TokenizerSynthetic, IgnoreMergesTakesWholeWords) {
    vocab_spec spec;
    spec.pre = "llama3";
    // "xyz" is a token but no merge builds it; llama3 takes the whole word anyway.
    spec.extra = {"xyz"};
    auto tok = build(spec, "ignore_merges");
    ASSERT_TRUE(tok) << tok.error().message;
    EXPECT_EQ((*tok)->encode("xyz", false), (std::vector<token_id>{256}));
    spec.pre = "qwen2";
    auto merged = build(spec, "ignore_merges_qwen2");
    ASSERT_TRUE(merged) << merged.error().message;
    EXPECT_EQ((*merged)->encode("xyz", false).size(), 3u);
}

// --- SentencePiece ("llama") ---

const tokenizer& llama_spm() {
    static const std::unique_ptr<tokenizer> tok =
        load_tokenizer(test::models_dir() + "/tokenizer/llama-spm-vocab.gguf");
    MOED_ASSERT(tok != nullptr);
    return *tok;
}

TEST(TokenizerLlamaSpm, SpecialTokensAndDefaults) {
    const tokenizer& tok = llama_spm();
    EXPECT_EQ(tok.n_vocab(), 32000);
    EXPECT_EQ(tok.bos_id(), 1);
    EXPECT_EQ(tok.eos_id(), 2);
    EXPECT_TRUE(tok.add_bos());
    EXPECT_TRUE(tok.add_space_prefix());
    EXPECT_TRUE(tok.is_eog(2));
    EXPECT_FALSE(tok.is_eog(1));
    EXPECT_TRUE(tok.is_special(0));  // <unk>
    EXPECT_EQ(tok.token_bytes(1), "");
    EXPECT_EQ(tok.token_bytes(1, true), "<s>");
    EXPECT_EQ(tok.token_bytes(tok.find_token("<0x0A>")), "\n");
    EXPECT_EQ(tok.token_bytes(tok.find_token("\xE2\x96\x81Hello")), " Hello");
    // A space goes in front of the text and after each special token; decode drops the first.
    const auto ids = tok.encode("Hello world", false);
    EXPECT_EQ(ids, (std::vector<token_id>{15043, 3186}));
    EXPECT_EQ(tok.decode(ids), "Hello world");
    EXPECT_EQ(tok.encode("<s>hi", true), (std::vector<token_id>{1, tok.find_token("\xE2\x96\x81hi")}));
    EXPECT_TRUE(tok.encode("", true).empty());
}

TEST(TokenizerLlamaSpm, ByteTokensStreamAsWholeCharacters) {
    const tokenizer& tok = llama_spm();
    // Characters the 32000 pieces lack become their UTF-8 bytes as <0xAB> tokens.
    const std::string text = "🦙 llama 😶\u200d🌫️ 𠀀 ok";
    const auto ids = tok.encode(text, false);
    utf8_stream stream;
    std::string out;
    int byte_tokens = 0;
    for (const token_id id : ids) {
        const std::string bytes = tok.token_bytes(id);
        const std::string part = stream.push(bytes);
        byte_tokens += bytes.size() == 1 && (static_cast<unsigned char>(bytes[0]) & 0x80) != 0;
        out += part;
    }
    out += stream.finish();
    EXPECT_EQ(out, " " + text);  // the stream keeps the leading space, as llama.cpp's does
    EXPECT_EQ(tok.decode(ids), text);
    EXPECT_GE(byte_tokens, 8);
    // Invalid UTF-8 is kept byte for byte (no U+FFFD as in byte-level BPE).
    const std::string invalid = "a\xff\xc3(";
    EXPECT_EQ(tok.decode(tok.encode(invalid, false)), invalid);
}

// A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then `pieces` with
// their scores (text with U+2581 for spaces).
struct spm_spec {
    std::vector<std::pair<std::string, float>> pieces;
    std::vector<std::uint8_t> drop_bytes;
    int score_count_delta = 0;
    bool scores_as_ints = false;
    int add_space_prefix = -1;  // -1: key absent
    bool write_special_ids = true;
};

result<std::unique_ptr<tokenizer>> build_spm(const spm_spec& spec, const std::string& name) {
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<std::int32_t> types = {2, 3, 3};
    std::vector<float> scores = {0, 0, 0};
    for (unsigned b = 0; b < 256; ++b) {
        if (std::find(spec.drop_bytes.begin(), spec.drop_bytes.end(), b) != spec.drop_bytes.end()) continue;
        char hex[8];
        std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
        tokens.push_back(hex);
        types.push_back(6);
        scores.push_back(0);
    }
    for (const auto& [text, score] : spec.pieces) {
        tokens.push_back(text);
        types.push_back(1);
        scores.push_back(score);
    }
    if (spec.score_count_delta < 0) scores.resize(scores.size() - 1);
    storage::gguf_writer w;
    w.set_string("general.architecture", "llama");
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    if (spec.scores_as_ints) {
        w.set_i32_array("tokenizer.ggml.scores", std::vector<std::int32_t>(scores.size(), 0));
    } else {
        w.set_f32_array("tokenizer.ggml.scores", scores);
    }
    if (spec.write_special_ids) {
        w.set_u32("tokenizer.ggml.bos_token_id", 1);
        w.set_u32("tokenizer.ggml.eos_token_id", 2);
    }
    if (spec.add_space_prefix >= 0) w.set_bool("tokenizer.ggml.add_space_prefix", spec.add_space_prefix != 0);
    const std::string path = (test::temp_dir() / (name + ".gguf")).string();
    auto written = w.write(path);
    if (!written) return unexpected(std::move(written).error());
    auto file = storage::gguf_file::open(path);
    if (!file) return unexpected(std::move(file).error());
    return tokenizer::from_gguf(**file);
}

constexpr token_id spm_first_piece = 3 + 256;

TEST(TokenizerSpmSynthetic, HighestScoreMergesFirstThenLeftmost) {
    spm_spec spec;
    spec.add_space_prefix = 0;
    // 259 a, 260 b, 261 c, 262 ab (-5), 263 bc (-3), 264 abc (-10), 265 aa (-2)
    spec.pieces = {{"a", -1}, {"b", -1}, {"c", -1}, {"ab", -5}, {"bc", -3}, {"abc", -10}, {"aa", -2}};
    auto tok = build_spm(spec, "spm_scores");
    ASSERT_TRUE(tok) << tok.error().message;
    EXPECT_FALSE((*tok)->add_space_prefix());
    // "bc" scores higher than "ab", so abc is a + bc -> abc even though abc scores lowest.
    EXPECT_EQ((*tok)->encode("abc", false), (std::vector<token_id>{spm_first_piece + 5}));
    EXPECT_EQ((*tok)->encode("abx", false), (std::vector<token_id>{spm_first_piece + 3, 3 + 'x'}));
    // Equal scores: leftmost first, so aaaa is aa + aa and aaa is aa + a.
    EXPECT_EQ((*tok)->encode("aaaa", false), (std::vector<token_id>{spm_first_piece + 6, spm_first_piece + 6}));
    EXPECT_EQ((*tok)->encode("aaa", false), (std::vector<token_id>{spm_first_piece + 6, spm_first_piece}));
}

TEST(TokenizerSpmSynthetic, SpacesAndByteFallback) {
    spm_spec spec;
    spec.pieces = {{"\xE2\x96\x81" "a", -1}, {"\xE2\x96\x81", -2}, {"b", -3}};
    spec.drop_bytes = {'q'};
    auto tok = build_spm(spec, "spm_spaces");
    ASSERT_TRUE(tok) << tok.error().message;
    EXPECT_TRUE((*tok)->add_space_prefix());  // the default for SentencePiece
    EXPECT_TRUE((*tok)->add_bos());
    // The byte token of 'q' is left out, so ids are looked up by text.
    const token_id space_a = (*tok)->find_token("\xE2\x96\x81" "a");
    const token_id space = (*tok)->find_token("\xE2\x96\x81");
    const token_id b = (*tok)->find_token("b");
    ASSERT_GE(space_a, 0);
    EXPECT_EQ((*tok)->encode("a b", false), (std::vector<token_id>{space_a, space, b}));
    // é is no piece: its two bytes; q has no byte token either: the unknown token.
    EXPECT_EQ((*tok)->encode("b\xC3\xA9q", false),
              (std::vector<token_id>{space, b, (*tok)->find_token("<0xC3>"), (*tok)->find_token("<0xA9>"), 0}));
    EXPECT_EQ((*tok)->decode((*tok)->encode("a b", false)), "a b");
    // Control tokens split only with parse_special; a space follows each.
    EXPECT_EQ((*tok)->encode("</s>a", true), (std::vector<token_id>{2, space_a}));
    const std::vector<token_id> after_eos{2, space_a};
    EXPECT_EQ((*tok)->decode(after_eos, true), "</s> a");
}

TEST(TokenizerSpmSynthetic, DefaultSpecialIdsAndBadScores) {
    spm_spec defaults;
    defaults.write_special_ids = false;
    auto tok = build_spm(defaults, "spm_defaults");
    ASSERT_TRUE(tok) << tok.error().message;
    EXPECT_EQ((*tok)->bos_id(), 1);  // llama.cpp's SentencePiece defaults
    EXPECT_EQ((*tok)->eos_id(), 2);
    EXPECT_TRUE((*tok)->is_eog(2));

    spm_spec short_scores;
    short_scores.score_count_delta = -1;
    auto short_tok = build_spm(short_scores, "spm_short_scores");
    ASSERT_FALSE(short_tok);
    EXPECT_EQ(short_tok.error().code, errc::bad_file);
    EXPECT_NE(short_tok.error().message.find("tokenizer.ggml.scores"), std::string::npos) << short_tok.error().message;
    spm_spec int_scores;
    int_scores.scores_as_ints = true;
    auto int_tok = build_spm(int_scores, "spm_int_scores");
    ASSERT_FALSE(int_tok);
    EXPECT_NE(int_tok.error().message.find("tokenizer.ggml.scores"), std::string::npos) << int_tok.error().message;
}

void expect_error(const vocab_spec& spec, const std::string& name, errc code,
                  std::initializer_list<std::string_view> mentions) {
    auto tok = build(spec, name);
    ASSERT_FALSE(tok) << name << " should be refused";
    EXPECT_EQ(tok.error().code, code) << tok.error().message;
    for (const auto m : mentions) {
        EXPECT_NE(tok.error().message.find(m), std::string::npos) << "'" << m << "' not in: " << tok.error().message;
    }
}

TEST(TokenizerErrors, RefusesBadFiles) {
    vocab_spec wrong_model;
    wrong_model.model = "bert";
    expect_error(wrong_model, "wrong_model", errc::unsupported, {"wrong_model.gguf", "tokenizer.ggml.model", "bert"});

    vocab_spec unknown_pre;
    unknown_pre.pre = "klingon-bpe";
    expect_error(unknown_pre, "unknown_pre", errc::unsupported,
                 {"unknown_pre.gguf", "tokenizer.ggml.pre", "klingon-bpe"});

    vocab_spec short_types;
    short_types.type_count_delta = -1;
    expect_error(short_types, "short_types", errc::bad_file, {"tokenizer.ggml.token_type"});
    vocab_spec long_types;
    long_types.type_count_delta = 1;
    expect_error(long_types, "long_types", errc::bad_file, {"tokenizer.ggml.token_type"});

    vocab_spec bad_merge;
    bad_merge.merges = {"a zz"};
    expect_error(bad_merge, "bad_merge", errc::bad_file, {"tokenizer.ggml.merges", "zz"});
    vocab_spec no_space;
    no_space.merges = {"ab"};
    expect_error(no_space, "merge_without_space", errc::bad_file, {"tokenizer.ggml.merges"});

    vocab_spec bad_eos;
    bad_eos.eos = 100000;
    expect_error(bad_eos, "bad_eos", errc::bad_file, {"tokenizer.ggml.eos_token_id", "100000"});

    vocab_spec duplicate;
    duplicate.extra = {"a"};
    expect_error(duplicate, "duplicate", errc::bad_file, {"tokenizer.ggml.tokens"});

    // Only Kimi-K2's files may leave the merges out (llama.cpp then merges nothing).
    vocab_spec no_merges;
    no_merges.write_merges = false;
    expect_error(no_merges, "no_merges", errc::bad_file, {"no_merges.gguf", "tokenizer.ggml.merges"});
    no_merges.pre = "kimi-k2";
    auto kimi = build(no_merges, "kimi_no_merges");
    ASSERT_TRUE(kimi) << kimi.error().message;
    EXPECT_EQ((*kimi)->encode("ab", false), (std::vector<token_id>{'a', 'b'}));

    vocab_spec bad_type;
    bad_type.extra = {"zz"};
    bad_type.extra_types = {9};
    expect_error(bad_type, "bad_type", errc::bad_file, {"tokenizer.ggml.token_type"});
}

TEST(TokenizerErrors, MissingOrMistypedKeys) {
    storage::gguf_writer w;
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_i32_array("tokenizer.ggml.tokens", {1, 2, 3});
    const std::string path = (test::temp_dir() / "mistyped.gguf").string();
    ASSERT_TRUE(w.write(path));
    auto file = storage::gguf_file::open(path);
    ASSERT_TRUE(file) << file.error().message;
    auto tok = tokenizer::from_gguf(**file);
    ASSERT_FALSE(tok);
    EXPECT_EQ(tok.error().code, errc::bad_file);
    EXPECT_NE(tok.error().message.find("tokenizer.ggml.tokens"), std::string::npos) << tok.error().message;
}

}  // namespace
}  // namespace moed::engine
