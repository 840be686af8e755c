// Constrains a sequence's tokens to a JSON grammar (engine/json_grammar.h): the hook that
// response_format json_object / json_schema puts between the logits and the sampler.
//
// json_token_index: the vocabulary's token bytes as a trie, built once per model. Special
// tokens are never allowed, except end-of-generation tokens once the document is complete.
// json_constraint: one sequence's recogniser state. A token is allowed when its bytes keep
// the document valid and the document can still be closed within the tokens left (counted
// as bytes: every byte has a token of its own in a byte-level vocabulary, so the closing
// bytes always fit), so a constrained reply ends as complete JSON before max_tokens unless
// max_tokens is below the smallest document (json_token_index::fits tells the caller).
// sample_constrained: samples as the sampler does, checks the token, and only when it is
// not allowed masks the logits (-inf for every token not allowed, one walk of the trie)
// and samples again: the result is drawn from the masked distribution, at the cost of one
// token check in the common case.
// Threads: the index is immutable after construction (any thread); a constraint belongs to
// its sequence's thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/json_grammar.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

namespace moed::engine {

class json_token_index {
public:
    explicit json_token_index(const tokenizer& vocab);

    std::int32_t n_vocab() const noexcept { return n_vocab_; }
    // Every printable ASCII byte has a one-byte token: the closing budget holds.
    bool single_bytes() const noexcept { return single_bytes_; }

private:
    friend class json_constraint;
    struct trie_node {
        std::uint32_t first_child = 0;  // children are nodes [first_child, first_child + n_children)
        std::uint32_t n_children = 0;
        std::uint32_t first_token = 0;  // tokens ending here: tokens_[first_token, + n_tokens)
        std::uint32_t n_tokens = 0;
        std::uint8_t byte = 0;          // the edge from the parent
    };
    std::vector<trie_node> nodes_;      // nodes_[0] is the root
    std::vector<token_id> tokens_;
    std::vector<std::string> bytes_;    // of each token id; empty for special tokens
    std::vector<token_id> eog_;
    std::vector<std::uint8_t> is_eog_;
    std::size_t max_token_bytes_ = 0;
    std::int32_t n_vocab_ = 0;
    bool single_bytes_ = false;
};

class json_constraint {
public:
    // `grammar` and `index` must outlive the constraint. `max_tokens`: the tokens this
    // sequence may still generate.
    json_constraint(const json_grammar& grammar, const json_token_index& index, std::int32_t max_tokens);

    // Would `token` keep the document valid and closable in the tokens left after it.
    bool allows(token_id token) const noexcept;
    // Sets every token not allowed to -inf; false when none is allowed.
    bool mask(std::span<float> logits);
    // Takes an allowed token (MOED_ASSERT otherwise).
    void accept(token_id token) noexcept;
    // The document is complete (end of generation may come) / closed (nothing may follow).
    bool complete() const noexcept { return rec_.complete(state_); }
    bool closed() const noexcept { return rec_.closed(state_); }
    // Bytes still needed to complete the document.
    std::uint32_t min_bytes_to_close() const noexcept { return rec_.min_bytes_to_close(state_); }

private:
    bool fits(const json_state& after, std::int32_t left_after) const noexcept;
    void walk(std::uint32_t node, std::size_t depth, std::span<std::uint8_t> allowed);

    json_recognizer rec_;
    const json_token_index& index_;
    json_state state_;
    std::int32_t left_;  // tokens this sequence may still generate
    std::vector<json_state> stack_;      // one state per trie depth (mask)
    std::vector<std::uint8_t> allowed_;  // per token (mask)
};

// Samples the next token of a constrained sequence (`constraint` null: as smp.sample). The
// token returned is allowed by the constraint, or -1 when the constraint allows none.
// `scratch` holds the masked logits when they are needed. Does not accept the token.
token_id sample_constrained(sampler& smp, json_constraint* constraint, std::span<const float> logits,
                            std::span<const token_id> history, std::vector<float>& scratch,
                            std::size_t n_generated = 0);

}  // namespace moed::engine
