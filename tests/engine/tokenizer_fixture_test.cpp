// Tokenizer parity with llama.cpp on recorded fixtures (tests/engine/fixtures/tokenizer/,
// written by scripts/make-tokenizer-fixtures.py from llama.cpp 34af94cd9).
// - <set>.json, one per vocabulary: for every string of inputs.json, encode() without and with
//   special-token parsing must give llama.cpp's ids; the token_bytes() of those ids must be
//   llama_token_to_piece's bytes (what a stream prints); where llama_detokenize gives the text
//   back, decode() must too. Sets: the Llama-2 / Mixtral SentencePiece vocabulary
//   (models/tokenizer/llama-spm-vocab.gguf), and the Qwen3 vocabulary copied with
//   tokenizer.ggml.pre replaced by each pre-tokenizer name (gpt-4o, glm4, deepseek-llm,
//   deepseek-coder, kimi-k2, and the older ones as a cross-check), as llama.cpp read it.
// - splits.json: the words llama.cpp's pre-tokenizer makes of every string, per name; the
//   pre-tokenizer alone must split at the same bytes (shows splits the ids can hide).
// - With MOED_LLAMA_VOCAB_DIR set to a folder of llama.cpp's models/ggml-vocab-*.gguf files
//   and their .inp/.out (Hugging Face's ids), every such vocabulary moed supports is checked
//   against the .out ids too; skipped otherwise (the larger files are not bundled).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/tokenizer.h"
#include "engine/tokenizer_pretok.h"
#include "storage/gguf.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

namespace fs = std::filesystem;

fs::path fixtures_dir() { return fs::path(test::tests_dir()) / "engine" / "fixtures" / "tokenizer"; }

nlohmann::json load_json(const fs::path& path) {
    std::ifstream in(path);
    EXPECT_TRUE(in.good()) << "missing " << path;
    return nlohmann::json::parse(in);
}

std::string from_hex(const std::string& hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    return out;
}

std::string case_text(const nlohmann::json& c) {
    return c.contains("text_hex") ? from_hex(c["text_hex"].get<std::string>()) : c["text"].get<std::string>();
}

std::string printable(const std::string& s) {
    std::string out;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7F) {
            char escaped[8];
            std::snprintf(escaped, sizeof(escaped), "\\x%02x", u);
            out += escaped;
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::string show(const std::vector<token_id>& ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
    return s + "]";
}

std::unique_ptr<tokenizer> open_tokenizer(const std::string& path) {
    auto file = storage::gguf_file::open(path);
    EXPECT_TRUE(file) << file.error().message;
    if (!file) return nullptr;
    auto tok = tokenizer::from_gguf(**file);
    EXPECT_TRUE(tok) << tok.error().message;
    if (!tok) return nullptr;
    return std::move(tok).value();
}

// A copy of `source` whose tokenizer.ggml.pre is `pre`, every other key as it was.
std::string with_pre(const std::string& source, const std::string& pre) {
    auto file = storage::gguf_file::open(source);
    EXPECT_TRUE(file) << file.error().message;
    storage::gguf_writer w;
    for (const auto& [key, value] : (*file)->metadata()) {
        if (key == "tokenizer.ggml.pre") {
            w.set_string(key, pre);
        } else {
            w.set(key, value);
        }
    }
    const std::string path = (test::temp_dir() / ("qwen3-" + pre + ".gguf")).string();
    const auto written = w.write(path);
    EXPECT_TRUE(written) << written.error().message;
    return path;
}

std::string tokens_bytes(const tokenizer& tok, const std::vector<token_id>& ids, bool special) {
    std::string out;
    for (const token_id id : ids) out += tok.token_bytes(id, special);
    return out;
}

// --- ids, pieces and round trips per vocabulary ---

class TokenizerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerFixture, MatchesLlamaCpp) {
    const nlohmann::json doc = load_json(fixtures_dir() / (GetParam() + ".json"));
    const std::string vocab = doc["vocab"];
    std::unique_ptr<tokenizer> tok;
    if (doc["pre"].is_null()) {
        tok = open_tokenizer(test::models_dir() + "/tokenizer/" + vocab);
    } else {
        tok = open_tokenizer(with_pre(test::models_dir() + "/tokenizer/" + vocab, doc["pre"].get<std::string>()));
    }
    ASSERT_NE(tok, nullptr);
    const auto& cases = doc["cases"];
    ASSERT_GT(cases.size(), 100u);
    int ids_ok = 0;
    int pieces_ok = 0;
    int round_trips = 0;
    for (const auto& c : cases) {
        const std::string text = case_text(c);
        const auto expected = c["ids"].get<std::vector<token_id>>();
        const auto expected_special = c["ids_special"].get<std::vector<token_id>>();
        const auto got = tok->encode(text, false);
        const auto got_special = tok->encode(text, true);
        EXPECT_EQ(got, expected) << GetParam() << " text: " << printable(text) << "\n got " << show(got) << "\nwant "
                                 << show(expected);
        EXPECT_EQ(got_special, expected_special) << GetParam() << " parse_special, text: " << printable(text)
                                                 << "\n got " << show(got_special) << "\nwant " << show(expected_special);
        ids_ok += (got == expected) + (got_special == expected_special);

        const std::string pieces = tokens_bytes(*tok, expected, false);
        const std::string pieces_special = tokens_bytes(*tok, expected_special, true);
        EXPECT_EQ(pieces, from_hex(c["pieces_hex"])) << GetParam() << " token_bytes, text: " << printable(text);
        EXPECT_EQ(pieces_special, from_hex(c["pieces_special_hex"]))
            << GetParam() << " token_bytes(special), text: " << printable(text);
        pieces_ok += (pieces == from_hex(c["pieces_hex"])) + (pieces_special == from_hex(c["pieces_special_hex"]));

        if (c["round_trips"].get<bool>()) {
            EXPECT_EQ(tok->decode(expected), text) << GetParam() << " decode";
            ++round_trips;
        }
        if (c["round_trips_special"].get<bool>()) {
            EXPECT_EQ(tok->decode(expected_special, true), text) << GetParam() << " decode(special)";
        }
    }
    std::cout << "[ info ] " << GetParam() << ": " << ids_ok << "/" << 2 * cases.size() << " encodings and "
              << pieces_ok << "/" << 2 * cases.size() << " piece sequences match llama.cpp; " << round_trips
              << " round trips checked\n";
}

INSTANTIATE_TEST_SUITE_P(Sets, TokenizerFixture,
                         ::testing::Values("llama-spm", "qwen3-gpt-4o", "qwen3-glm4", "qwen3-deepseek-llm",
                                           "qwen3-deepseek-coder", "qwen3-kimi-k2", "qwen3-deepseek-v3",
                                           "qwen3-qwen2", "qwen3-llama3", "qwen3-gpt-2", "qwen3-default"),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                             std::string name = param_info.param;
                             for (char& c : name) {
                                 if (c == '-') c = '_';
                             }
                             return name;
                         });

// --- the pre-tokenizer's words ---

TEST(TokenizerFixtureSplits, MatchLlamaCppPreTokenizer) {
    const auto inputs = load_json(fixtures_dir() / "inputs.json")["cases"];
    const auto splits = load_json(fixtures_dir() / "splits.json")["pre"];
    ASSERT_GE(splits.size(), 10u);
    for (const auto& [name, expected] : splits.items()) {
        auto pre = pre_tokenizer::create(name);
        ASSERT_TRUE(pre) << pre.error().message;
        const auto& cases = expected["cases"];
        ASSERT_EQ(cases.size(), inputs.size()) << name;
        int ok = 0;
        pretok_scratch scratch;
        for (std::size_t i = 0; i < cases.size(); ++i) {
            const std::string text = case_text(inputs[i]);
            const std::string_view bytes = (*pre)->split(text, scratch);
            std::vector<std::size_t> lengths;
            for (const word_span w : scratch.words) lengths.push_back(w.end - w.begin);
            const auto want = cases[i]["lengths"].get<std::vector<std::size_t>>();
            bool same = lengths == want;
            if (cases[i].contains("covers_hex")) same = same && bytes == from_hex(cases[i]["covers_hex"]);
            ok += same;
            if (!same) {
                std::string words;
                for (const word_span w : scratch.words) words += "[" + printable(std::string(bytes.substr(w.begin, w.end - w.begin))) + "]";
                ADD_FAILURE() << name << " splits " << printable(text) << "\n into " << words << "\n word lengths "
                              << ::testing::PrintToString(lengths) << ", llama.cpp's " << ::testing::PrintToString(want);
            }
        }
        std::cout << "[ info ] pre-tokenizer " << name << ": " << ok << "/" << cases.size() << " splits match\n";
    }
}

// --- llama.cpp's vocabulary test files, when present ---

TEST(TokenizerVocabFiles, MatchHuggingFaceIds) {
    const char* dir = std::getenv("MOED_LLAMA_VOCAB_DIR");
    if (dir == nullptr || *dir == '\0') GTEST_SKIP() << "set MOED_LLAMA_VOCAB_DIR to check llama.cpp's ggml-vocab files";
    int checked = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
        const std::string file_name = entry.path().filename().string();
        if (!file_name.starts_with("ggml-vocab-") || entry.path().extension() != ".gguf") continue;
        const fs::path inp = entry.path().string() + ".inp";
        const fs::path out = entry.path().string() + ".out";
        if (!fs::exists(inp) || !fs::exists(out)) continue;
        auto file = storage::gguf_file::open(entry.path().string());
        ASSERT_TRUE(file) << file.error().message;
        auto tok = tokenizer::from_gguf(**file);
        if (!tok) {
            std::cout << "[ info ] " << file_name << ": not supported (" << tok.error().message << ")\n";
            continue;
        }
        std::stringstream inp_text;
        inp_text << std::ifstream(inp).rdbuf();
        const std::string all = inp_text.str();
        std::vector<std::string> texts;
        const std::string separator = "\n__ggml_vocab_test__\n";
        for (std::size_t at = 0; at < all.size();) {
            const std::size_t next = all.find(separator, at);
            if (next == std::string::npos) break;
            texts.push_back(all.substr(at, next - at));
            at = next + separator.size();
        }
        std::ifstream out_lines(out);
        int ok = 0;
        for (const std::string& text : texts) {
            std::string line;
            std::getline(out_lines, line);
            std::vector<token_id> want;
            std::istringstream ids(line);
            for (token_id id; ids >> id;) want.push_back(id);
            const auto got = (*tok)->encode(text, false);
            EXPECT_EQ(got, want) << file_name << " text: " << printable(text) << "\n got " << show(got) << "\nwant "
                                 << show(want);
            ok += got == want;
        }
        std::cout << "[ info ] " << file_name << ": " << ok << "/" << texts.size() << " match the .out ids\n";
        ++checked;
    }
    EXPECT_GT(checked, 0) << "no ggml-vocab-*.gguf with .inp/.out in " << dir;
}

}  // namespace
}  // namespace moed::engine
