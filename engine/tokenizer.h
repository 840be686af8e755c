// The tokenizers of GGUF vocabularies, as llama.cpp implements them:
// - `tokenizer.ggml.model = gpt2`: byte-level BPE. Each fragment of text is split into words
//   by the pre-tokenizer that `tokenizer.ggml.pre` selects (Unicode classes through PCRE2);
//   each word's bytes are mapped to the byte-level alphabet and merged by rank.
// - `llama`: SentencePiece BPE (Llama 2, Mistral, Mixtral). Spaces become U+2581, a space
//   goes in front of the text and after every special token (tokenizer.ggml.add_space_prefix,
//   default on), characters merge by the score of the token they form, and what is left
//   that is no token falls back to byte tokens (<0xAB>).
// Either way text is first split into special tokens (control tokens only when
// parse_special; user-defined tokens always, as llama.cpp does).
// Threads: immutable after construction; any thread may call it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace moed::storage {
class gguf_file;
}

namespace moed::engine {

using token_id = std::int32_t;

class tokenizer {
public:
    // Reads tokenizer.ggml.{model,pre,tokens,token_type,merges,scores,bos_token_id,...}.
    // An unsupported model or pre-tokenizer, or inconsistent arrays, is an error naming the
    // file, the key and the value.
    static result<std::unique_ptr<tokenizer>> from_gguf(const storage::gguf_file& file);
    ~tokenizer();

    // The ids llama.cpp's llama_tokenize gives with add_special = false: no BOS is added
    // (callers prepend bos_id() when add_bos()). With parse_special, control-token texts
    // become their ids; user-defined tokens are always matched. Any bytes are accepted, as
    // llama.cpp accepts them: byte-level BPE encodes invalid UTF-8 as U+FFFD, SentencePiece
    // keeps every byte (byte fallback).
    std::vector<token_id> encode(std::string_view text, bool parse_special) const;

    // The raw bytes a token stands for, as llama_token_to_piece gives them (byte-level
    // alphabet mapped back to bytes; U+2581 as a space and <0xAB> as its byte for
    // SentencePiece; control tokens give their text only when `special` is true, else
    // nothing). A byte token is one byte of a character: stream pieces through utf8_stream.
    std::string token_bytes(token_id id, bool special = false) const;
    // Concatenated bytes of `ids`; may end in an incomplete UTF-8 sequence. With
    // add_space_prefix() the first token's leading space is dropped (llama_detokenize), so
    // decode(encode(x)) == x; streamed token_bytes() keep it, as llama.cpp's stream does.
    std::string decode(std::span<const token_id> ids, bool special = false) const;

    std::int32_t n_vocab() const noexcept;
    token_id bos_id() const noexcept;  // -1 when the file has none
    token_id eos_id() const noexcept;
    // tokenizer.ggml.add_bos_token (default per pre-tokenizer); false when there is no BOS.
    bool add_bos() const noexcept;
    // SentencePiece's space in front of the text (tokenizer.ggml.add_space_prefix).
    bool add_space_prefix() const noexcept;
    // End of generation: eos, eot, eom and similar control tokens.
    bool is_eog(token_id id) const noexcept;
    // The token's id for an exact token text (e.g. "<|im_start|>"), or -1.
    token_id find_token(std::string_view text) const noexcept;
    // A control, user-defined or unknown token: one encode() splits out of the text before
    // tokenizing the rest (control and unknown ones only with parse_special).
    bool is_special(token_id id) const noexcept;

private:
    tokenizer();
    struct impl;
    std::unique_ptr<impl> impl_;
};

// Turns a stream of token bytes into valid UTF-8 text: push() returns what is complete so
// far and keeps a trailing incomplete sequence for the next call; finish() returns the rest,
// with U+FFFD for each byte that never formed a valid sequence.
class utf8_stream {
public:
    std::string push(std::string_view bytes);
    std::string finish();

private:
    std::string pending_;
};

}  // namespace moed::engine
