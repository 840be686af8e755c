// Tokenizes many strings with llama.cpp's own tokenizer in one process, for
// scripts/make-tokenizer-fixtures.py (which compiles it against a llama.cpp build).
//
//     llama-tokenize-batch MODEL.gguf PRE < records > results
//     llama-tokenize-batch --split EXPRESSIONS < records > results
//
// PRE replaces tokenizer.ggml.pre through llama.cpp's metadata override ("-" keeps the
// file's), so one vocabulary serves every pre-tokenizer. Input: records "<bytes>\n<text>".
// For each record and each parse_special in (false, true), one line
//     ids <id> <id> ...|detok <hex>|pieces <hex>
// with add_special = false: detok is llama_detokenize(remove_special = false,
// unparse_special = parse_special), pieces the concatenated llama_token_to_piece(lstrip 0,
// special = parse_special) of every id, both as hex bytes.
// With --split, llama.cpp's pre-tokenizer alone (unicode_regex_split, without the byte-level
// mapping) splits each record by the expressions in the file EXPRESSIONS (records too, in
// the order llama.cpp applies them); one line per record: "words <hex> <hex> ...".
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "llama.h"
#include "unicode.h"  // llama.cpp src/: unicode_regex_split

namespace {

std::string hex(const std::string& s) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (const unsigned char c : s) {
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 15]);
    }
    return out;
}

void quiet(ggml_log_level, const char*, void*) {}

bool read_record(std::istream& in, std::string& text) {
    std::string header;
    if (!std::getline(in, header)) return false;
    text.assign(std::stoul(header), '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    return true;
}

int split_records(const char* expressions_path) {
    std::ifstream in(expressions_path, std::ios::binary);
    std::vector<std::string> expressions;
    for (std::string e; read_record(in, e);) expressions.push_back(e);
    if (expressions.empty()) {
        std::fprintf(stderr, "no expressions in %s\n", expressions_path);
        return 1;
    }
    std::string text;
    while (read_record(std::cin, text)) {
        std::cout << "words";
        // No fragment is ever empty in llama.cpp (and kimi-k2's splitter refuses one).
        if (!text.empty())
            for (const std::string& word : unicode_regex_split(text, expressions, false)) std::cout << ' ' << hex(word);
        std::cout << '\n';
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf PRE|- < records\n       %s --split EXPRESSIONS < records\n",
                     argv[0], argv[0]);
        return 2;
    }
    if (std::strcmp(argv[1], "--split") == 0) return split_records(argv[2]);
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    std::vector<llama_model_kv_override> overrides(2);
    std::memset(overrides.data(), 0, sizeof(llama_model_kv_override) * overrides.size());
    llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    if (std::strcmp(argv[2], "-") != 0) {
        overrides[0].tag = LLAMA_KV_OVERRIDE_TYPE_STR;
        std::snprintf(overrides[0].key, sizeof(overrides[0].key), "%s", "tokenizer.ggml.pre");
        std::snprintf(overrides[0].val_str, sizeof(overrides[0].val_str), "%s", argv[2]);
        params.kv_overrides = overrides.data();
    }
    llama_model* model = llama_model_load_from_file(argv[1], params);
    if (model == nullptr) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab* vocab = llama_model_get_vocab(model);

    std::string text;
    while (read_record(std::cin, text)) {
        for (const bool special : {false, true}) {
            std::vector<llama_token> ids(text.size() * 4 + 16);
            const int32_t count = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                                                 static_cast<int32_t>(ids.size()), false, special);
            if (count < 0) {
                std::fprintf(stderr, "llama_tokenize failed (%d)\n", count);
                return 1;
            }
            ids.resize(static_cast<std::size_t>(count));
            std::string detok(text.size() * 4 + 64, '\0');
            const int32_t length = llama_detokenize(vocab, ids.data(), count, detok.data(),
                                                    static_cast<int32_t>(detok.size()), false, special);
            detok.resize(length < 0 ? 0 : static_cast<std::size_t>(length));
            std::string pieces;
            for (const llama_token id : ids) {
                char buf[512];
                const int32_t k = llama_token_to_piece(vocab, id, buf, sizeof(buf), 0, special);
                if (k > 0) pieces.append(buf, static_cast<std::size_t>(k));
            }
            std::cout << "ids";
            for (const llama_token id : ids) std::cout << ' ' << id;
            std::cout << "|detok " << hex(detok) << "|pieces " << hex(pieces) << '\n';
        }
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
