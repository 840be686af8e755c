#include "engine/json_constraint.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace moed::engine {

json_token_index::json_token_index(const tokenizer& vocab) : n_vocab_(vocab.n_vocab()) {
    const auto n = static_cast<std::size_t>(n_vocab_);
    bytes_.resize(n);
    is_eog_.assign(n, 0);
    std::vector<token_id> order;
    order.reserve(n);
    std::vector<std::uint8_t> single(256, 0);
    for (token_id id = 0; id < n_vocab_; ++id) {
        if (vocab.is_eog(id)) {
            eog_.push_back(id);
            is_eog_[static_cast<std::size_t>(id)] = 1;
            continue;
        }
        if (vocab.is_special(id)) continue;
        std::string b = vocab.token_bytes(id);
        if (b.empty()) continue;
        if (b.size() == 1) single[static_cast<std::uint8_t>(b[0])] = 1;
        max_token_bytes_ = std::max(max_token_bytes_, b.size());
        bytes_[static_cast<std::size_t>(id)] = std::move(b);
        order.push_back(id);
    }
    single_bytes_ = std::all_of(single.begin() + 0x20, single.begin() + 0x7F, [](std::uint8_t v) { return v != 0; });
    std::sort(order.begin(), order.end(), [&](token_id a, token_id b) {
        return bytes_[static_cast<std::size_t>(a)] < bytes_[static_cast<std::size_t>(b)];
    });
    tokens_ = order;

    // The trie over the sorted byte strings: a node at depth d covers a range of tokens with
    // a common d-byte prefix; those of exactly d bytes come first (they end at the node), the
    // rest split by their next byte into children, laid out next to each other.
    struct pending {
        std::uint32_t node;
        std::uint32_t lo;
        std::uint32_t hi;
        std::uint32_t depth;
    };
    nodes_.emplace_back();
    std::vector<pending> work{{0, 0, static_cast<std::uint32_t>(tokens_.size()), 0}};
    auto byte_at = [&](std::uint32_t i, std::uint32_t d) {
        return static_cast<std::uint8_t>(bytes_[static_cast<std::size_t>(tokens_[i])][d]);
    };
    while (!work.empty()) {
        const pending p = work.back();
        work.pop_back();
        std::uint32_t i = p.lo;
        while (i < p.hi && bytes_[static_cast<std::size_t>(tokens_[i])].size() == p.depth) ++i;
        nodes_[p.node].first_token = p.lo;
        nodes_[p.node].n_tokens = i - p.lo;
        const auto first_child = static_cast<std::uint32_t>(nodes_.size());
        std::uint32_t n_children = 0;
        while (i < p.hi) {
            const std::uint8_t b = byte_at(i, p.depth);
            std::uint32_t j = i;
            while (j < p.hi && byte_at(j, p.depth) == b) ++j;
            trie_node child;
            child.byte = b;
            nodes_.push_back(child);
            work.push_back({first_child + n_children, i, j, p.depth + 1});
            ++n_children;
            i = j;
        }
        nodes_[p.node].first_child = first_child;
        nodes_[p.node].n_children = n_children;
    }
}

json_constraint::json_constraint(const json_grammar& grammar, const json_token_index& index, std::int32_t max_tokens)
    : rec_(grammar), index_(index), state_(rec_.initial()), left_(max_tokens) {
    stack_.resize(index.max_token_bytes_ + 1);
    allowed_.resize(static_cast<std::size_t>(index.n_vocab_));
}

bool json_constraint::fits(const json_state& after, std::int32_t left_after) const noexcept {
    const std::uint32_t need = rec_.min_bytes_to_close(after);
    return need == 0 || (left_after > 0 && need <= static_cast<std::uint32_t>(left_after));
}

bool json_constraint::allows(token_id token) const noexcept {
    if (token < 0 || token >= index_.n_vocab_ || left_ <= 0) return false;
    const auto t = static_cast<std::size_t>(token);
    if (index_.is_eog_[t]) return complete();
    const std::string& bytes = index_.bytes_[t];
    if (bytes.empty()) return false;
    json_state s;
    s.assign(state_);
    return rec_.feed(s, bytes) && fits(s, left_ - 1);
}

void json_constraint::walk(std::uint32_t node, std::size_t depth, std::span<std::uint8_t> allowed) {
    const json_token_index::trie_node& n = index_.nodes_[node];
    if (n.n_tokens > 0 && fits(stack_[depth], left_ - 1)) {
        for (std::uint32_t i = 0; i < n.n_tokens; ++i)
            allowed[static_cast<std::size_t>(index_.tokens_[n.first_token + i])] = 1;
    }
    for (std::uint32_t c = 0; c < n.n_children; ++c) {
        const std::uint32_t child = n.first_child + c;
        json_state& next = stack_[depth + 1];
        next.assign(stack_[depth]);
        if (rec_.feed(next, index_.nodes_[child].byte)) walk(child, depth + 1, allowed);
    }
}

bool json_constraint::mask(std::span<float> logits) {
    MOED_ASSERT(logits.size() == allowed_.size());
    std::fill(allowed_.begin(), allowed_.end(), std::uint8_t{0});
    if (left_ > 0) {
        stack_[0].assign(state_);
        walk(0, 0, allowed_);
        if (complete()) {
            for (token_id id : index_.eog_) allowed_[static_cast<std::size_t>(id)] = 1;
        }
    }
    bool any = false;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        if (allowed_[i]) any = true;
        else logits[i] = -std::numeric_limits<float>::infinity();
    }
    return any;
}

void json_constraint::accept(token_id token) noexcept {
    MOED_ASSERT(allows(token));
    const auto t = static_cast<std::size_t>(token);
    if (!index_.is_eog_[t]) {
        const bool ok = rec_.feed(state_, index_.bytes_[t]);
        MOED_ASSERT(ok);
    }
    --left_;
}

token_id sample_constrained(sampler& smp, json_constraint* constraint, std::span<const float> logits,
                            std::span<const token_id> history, std::vector<float>& scratch, std::size_t n_generated) {
    const token_id first = smp.sample(logits, history, n_generated);
    if (constraint == nullptr || constraint->allows(first)) return first;
    scratch.assign(logits.begin(), logits.end());
    if (!constraint->mask(scratch)) return -1;
    const token_id second = smp.sample(scratch, history, n_generated);
    if (constraint->allows(second)) return second;
    // Rounding in the sampler's draw can land past the last token of any weight; the best
    // allowed token is then the honest answer.
    return argmax(scratch);
}

}  // namespace moed::engine
