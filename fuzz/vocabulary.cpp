#include "fuzz/vocabulary.h"

#include <cstdlib>

#include "fuzz/fuzz_support.h"

namespace moed::fuzz {

std::string vocabulary_path() {
    if (const char* env = std::getenv("MOED_FUZZ_MODEL"); env != nullptr && *env != '\0') return env;
    return std::string(MOED_MODELS_DIR) + "/tokenizer/qwen3-vocab.gguf";
}

const storage::gguf_file& vocabulary_file() {
    static const std::unique_ptr<storage::gguf_file> file = [] {
        auto opened = storage::gguf_file::open(vocabulary_path());
        if (!opened) fail("cannot open the vocabulary (set MOED_FUZZ_MODEL): {}", opened.error().message);
        return std::move(*opened);
    }();
    return *file;
}

const engine::tokenizer& vocabulary() {
    static const std::unique_ptr<engine::tokenizer> vocab = [] {
        auto loaded = engine::tokenizer::from_gguf(vocabulary_file());
        if (!loaded) fail("cannot load the vocabulary of {}: {}", vocabulary_path(), loaded.error().message);
        return std::move(*loaded);
    }();
    return *vocab;
}

const engine::tokenizer& sentencepiece_vocabulary() {
    static const std::unique_ptr<engine::tokenizer> vocab = [] {
        const std::string path = std::string(MOED_MODELS_DIR) + "/tokenizer/llama-spm-vocab.gguf";
        auto opened = storage::gguf_file::open(path);
        if (!opened) fail("cannot open the SentencePiece vocabulary: {}", opened.error().message);
        auto loaded = engine::tokenizer::from_gguf(**opened);
        if (!loaded) fail("cannot load the vocabulary of {}: {}", path, loaded.error().message);
        return std::move(*loaded);
    }();
    return *vocab;
}

}  // namespace moed::fuzz
