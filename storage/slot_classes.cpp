// The split of a tier's byte budget over slot classes; storage/slot_classes.h says the rules.
#include "storage/slot_classes.h"

#include <algorithm>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "common/units.h"

namespace moed::storage {

namespace {

using u128 = unsigned __int128;

constexpr std::uint64_t slot_index_max = std::numeric_limits<std::uint32_t>::max();

}  // namespace

slot_classes slot_classes::uniform(std::uint32_t n_slots, std::uint64_t slot_bytes, std::uint32_t n_layer) {
    slot_classes out;
    out.classes_.push_back(slot_class{slot_bytes, 0, n_slots, 0, n_layer});
    out.finish();
    return out;
}

void slot_classes::finish() noexcept {
    n_slots_ = 0;
    bytes_ = 0;
    for (slot_class& c : classes_) {
        c.first_slot = n_slots_;
        c.offset_bytes = bytes_;
        n_slots_ += c.n_slots;
        bytes_ += static_cast<std::uint64_t>(c.n_slots) * c.slot_bytes;
    }
}

std::uint64_t slot_classes::slot_bytes_max() const noexcept {
    std::uint64_t most = 0;
    for (const slot_class& c : classes_) most = std::max(most, c.slot_bytes);
    return most;
}

std::uint32_t slot_classes::n_slots_min() const noexcept {
    if (classes_.empty()) return 0;
    std::uint32_t least = classes_.front().n_slots;
    for (const slot_class& c : classes_) least = std::min(least, c.n_slots);
    return least;
}

std::uint32_t slot_classes::class_of_slot(std::uint32_t slot) const noexcept {
    MOED_ASSERT(slot < n_slots_);
    // A handful of classes at most (one per distinct slot size): a scan is the fastest search.
    std::uint32_t c = 0;
    while (slot >= classes_[c].first_slot + classes_[c].n_slots) ++c;
    return c;
}

std::uint64_t slot_classes::slot_offset(std::uint32_t slot) const noexcept {
    const slot_class& c = classes_[class_of_slot(slot)];
    return c.offset_bytes + static_cast<std::uint64_t>(slot - c.first_slot) * c.slot_bytes;
}

std::uint32_t slot_classes::slot_at(std::uint64_t offset) const noexcept {
    MOED_ASSERT(offset < bytes_);
    std::uint32_t k = 0;
    while (offset >= classes_[k].offset_bytes + static_cast<std::uint64_t>(classes_[k].n_slots) * classes_[k].slot_bytes) {
        ++k;
    }
    const slot_class& c = classes_[k];
    return c.first_slot + static_cast<std::uint32_t>((offset - c.offset_bytes) / c.slot_bytes);
}

result<slot_classes> plan_slot_classes(std::span<const std::uint64_t> layer_slot_bytes, std::uint32_t n_expert,
                                       std::uint64_t budget_bytes, std::uint32_t min_slots) {
    MOED_ASSERT(!layer_slot_bytes.empty() && n_expert > 0);
    const std::uint32_t least = std::max<std::uint32_t>(min_slots, 1);
    slot_classes out;
    out.class_of_layer_.resize(layer_slot_bytes.size());
    out.rank_in_class_.resize(layer_slot_bytes.size());
    for (std::size_t l = 0; l < layer_slot_bytes.size(); ++l) {
        const std::uint64_t bytes = layer_slot_bytes[l];
        MOED_ASSERT(bytes > 0);
        std::uint32_t c = 0;
        while (c < out.classes_.size() && out.classes_[c].slot_bytes != bytes) ++c;
        if (c == out.classes_.size()) out.classes_.push_back(slot_class{bytes, 0, 0, 0, 0});
        out.class_of_layer_[l] = c;
        out.rank_in_class_[l] = out.classes_[c].n_layer++;
    }
    std::vector<slot_class>& classes = out.classes_;
    const std::size_t n = classes.size();

    u128 required = 0;
    for (const slot_class& c : classes) required += static_cast<u128>(least) * c.slot_bytes;
    if (required > budget_bytes) {
        const auto need = static_cast<std::uint64_t>(std::min<u128>(required, std::numeric_limits<std::uint64_t>::max()));
        if (n == 1) {
            const std::uint64_t holds = budget_bytes / classes[0].slot_bytes;
            return make_error(errc::out_of_memory,
                              "host budget {} ({} bytes) holds {} expert slot{} of {} ({} bytes); at least {} slot{} "
                              "needed, so the budget must be at least {} ({} bytes)",
                              format_bytes(budget_bytes), budget_bytes, holds, holds == 1 ? "" : "s",
                              format_bytes(classes[0].slot_bytes), classes[0].slot_bytes, least,
                              least == 1 ? " is" : "s are", format_bytes(need), need);
        }
        std::string sizes;
        for (const slot_class& c : classes) {
            sizes += fmt::format("{}{} ({} bytes, {} layer{})", sizes.empty() ? "" : ", ", format_bytes(c.slot_bytes),
                                 c.slot_bytes, c.n_layer, c.n_layer == 1 ? "" : "s");
        }
        return make_error(errc::out_of_memory,
                          "host budget {} ({} bytes) is too small for the {} slot classes of this model's experts "
                          "(slots of {}): each needs at least {} slot{}, so the budget must be at least {} ({} bytes)",
                          format_bytes(budget_bytes), budget_bytes, n, sizes, least, least == 1 ? "" : "s",
                          format_bytes(need), need);
    }

    // What each class's experts need, and the share of the budget in that proportion. A
    // class whose share holds fewer than `least` slots gets `least` and leaves the split; the
    // others share the rest, until every share holds enough (at worst every class at
    // `least`, which the check above says fits).
    std::vector<u128> need(n);
    for (std::size_t c = 0; c < n; ++c) need[c] = static_cast<u128>(classes[c].n_layer) * n_expert * classes[c].slot_bytes;
    std::vector<std::uint8_t> fixed(n, 0);
    std::vector<u128> remainder(n, 0);  // of each share after whole slots, scaled by the same denominator
    std::vector<u128> denominator(n, 1);
    std::vector<u128> count(n, 0);
    for (;;) {
        u128 free_budget = budget_bytes;
        u128 free_need = 0;
        for (std::size_t c = 0; c < n; ++c) {
            if (fixed[c] != 0) {
                free_budget -= static_cast<u128>(least) * classes[c].slot_bytes;
            } else {
                free_need += need[c];
            }
        }
        if (free_need == 0) break;
        bool settled = true;
        for (std::size_t c = 0; c < n; ++c) {
            if (fixed[c] != 0) continue;
            // floor(free_budget x need / free_need / slot_bytes): a 64-bit budget times a need
            // (layers x experts x slot bytes, far below 2^64) fits 128 bits.
            denominator[c] = free_need * classes[c].slot_bytes;
            const u128 numerator = free_budget * need[c];
            count[c] = numerator / denominator[c];
            remainder[c] = numerator % denominator[c];
            if (count[c] < least) {
                fixed[c] = 1;
                settled = false;
            }
        }
        if (settled) break;
    }
    u128 used = 0;
    for (std::size_t c = 0; c < n; ++c) {
        if (fixed[c] != 0) {
            count[c] = least;
            remainder[c] = 0;
        }
        used += count[c] * classes[c].slot_bytes;
    }
    MOED_ASSERT(used <= budget_bytes);
    // The bytes the rounding left: further slots where they fit, largest remainder first
    // (remainders compared as fractions of their own denominators).
    std::vector<std::size_t> order(n);
    for (std::size_t c = 0; c < n; ++c) order[c] = c;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        // remainder / denominator is the fraction of a slot the share held beyond whole
        // slots; long double is exact enough to order them.
        const long double fa = static_cast<long double>(remainder[a]) / static_cast<long double>(denominator[a]);
        const long double fb = static_cast<long double>(remainder[b]) / static_cast<long double>(denominator[b]);
        return fa > fb;
    });
    u128 left = static_cast<u128>(budget_bytes) - used;
    for (bool added = true; added;) {
        added = false;
        for (std::size_t c : order) {
            if (classes[c].slot_bytes <= left) {
                ++count[c];
                left -= classes[c].slot_bytes;
                added = true;
            }
        }
    }
    u128 total = 0;
    for (std::size_t c = 0; c < n; ++c) {
        total += count[c];
        if (count[c] > slot_index_max || total > slot_index_max) {
            return make_error(errc::invalid_argument, "host budget {} ({} bytes) makes more slots than a slot index can count",
                              format_bytes(budget_bytes), budget_bytes);
        }
        classes[c].n_slots = static_cast<std::uint32_t>(count[c]);
    }
    out.finish();
    MOED_ASSERT(out.bytes() <= budget_bytes);
    return out;
}

}  // namespace moed::storage
