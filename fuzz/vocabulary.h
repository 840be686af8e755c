// The vocabulary the tokenizer, chat template and HTTP fuzz programs encode with: the
// bundled Qwen3 byte-level BPE (models/tokenizer/qwen3-vocab.gguf, the file the tokenizer
// tests use), or the GGUF file named by MOED_FUZZ_MODEL; and the bundled SentencePiece one
// (models/tokenizer/llama-spm-vocab.gguf, Llama 2 / Mixtral). Loaded once; a missing or bad
// file aborts the program with the reason.
#pragma once

#include <string>

#include "engine/tokenizer.h"
#include "storage/gguf.h"

namespace moed::fuzz {

std::string vocabulary_path();
const storage::gguf_file& vocabulary_file();
const engine::tokenizer& vocabulary();
const engine::tokenizer& sentencepiece_vocabulary();

}  // namespace moed::fuzz
