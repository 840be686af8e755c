#include "storage/eviction_policy.h"

#include <vector>

#include "common/assert.h"

namespace moed::storage {

namespace {

// LRU over evictable slots: a doubly linked list threaded through two index arrays (no node
// allocation after reset), with a sentinel at index n_slots. A slot joins the tail (most
// recent) when it becomes evictable, moves to the tail when used while evictable, and
// leaves when it is acquired or removed; the victim is the head. Slots in use are not in
// the list at all, so ordering among evictable slots is by the time each was last used or
// released, which is what LRU means for pinned buffers (a slot held for a long layer was in
// use all that time, so its release counts as its last use).
class lru_policy final : public eviction_policy {
public:
    const char* name() const noexcept override { return "lru"; }

    void reset(std::uint32_t n_slots) override {
        n_slots_ = n_slots;
        prev_.assign(static_cast<std::size_t>(n_slots) + 1, sentinel());
        next_.assign(static_cast<std::size_t>(n_slots) + 1, sentinel());
        linked_.assign(n_slots, false);
    }

    void on_insert(std::uint32_t slot, ExpertId) override {
        // Residency alone does not make a slot evictable; the table says so separately.
        MOED_ASSERT(slot < n_slots_);
    }

    void on_access(std::uint32_t slot) override {
        MOED_ASSERT(slot < n_slots_);
        if (linked_[slot]) {
            unlink(slot);
            link_tail(slot);
        }
    }

    void on_remove(std::uint32_t slot) override {
        MOED_ASSERT(slot < n_slots_);
        if (linked_[slot]) unlink(slot);
    }

    void on_evictable(std::uint32_t slot, bool evictable) override {
        MOED_ASSERT(slot < n_slots_);
        if (linked_[slot]) unlink(slot);
        if (evictable) link_tail(slot);
    }

    std::optional<std::uint32_t> choose_victim() override {
        const std::uint32_t head = next_[sentinel()];
        if (head == sentinel()) return std::nullopt;
        return head;
    }

private:
    std::uint32_t sentinel() const noexcept { return n_slots_; }

    void link_tail(std::uint32_t slot) noexcept {
        const std::uint32_t tail = prev_[sentinel()];
        prev_[slot] = tail;
        next_[slot] = sentinel();
        next_[tail] = slot;
        prev_[sentinel()] = slot;
        linked_[slot] = true;
    }

    void unlink(std::uint32_t slot) noexcept {
        next_[prev_[slot]] = next_[slot];
        prev_[next_[slot]] = prev_[slot];
        linked_[slot] = false;
    }

    std::uint32_t n_slots_ = 0;
    std::vector<std::uint32_t> prev_;
    std::vector<std::uint32_t> next_;
    std::vector<bool> linked_;
};

}  // namespace

std::unique_ptr<eviction_policy> make_lru_policy() { return std::make_unique<lru_policy>(); }

}  // namespace moed::storage
