// Byte sizes and budgets as people write them: "4GiB", "512 MiB", "1.5G", "300MB", "8192",
// and budgets relative to a total: "25%" or a fraction "0.25".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace moed {

// Parses a byte size. Binary units (KiB, MiB, GiB, TiB, and K/M/G/T alone) are powers of
// 1024; KB/MB/GB/TB are powers of 1000; no unit (or B) is bytes. Errors name the text.
result<std::uint64_t> parse_bytes(std::string_view text);

// A budget: either an absolute size or a fraction of some total known later.
struct budget_spec {
    std::uint64_t bytes = 0;
    double fraction = 0.0;  // in (0, 1] when relative
    bool relative = false;
    std::uint64_t resolve(std::uint64_t total) const noexcept {
        return relative ? static_cast<std::uint64_t>(static_cast<double>(total) * fraction) : bytes;
    }
};
// "25%" and "0.25" are relative; anything parse_bytes takes is absolute.
result<budget_spec> parse_budget(std::string_view text);

// "1.50 GiB", "12.0 MiB", "512 B": for logs and tables.
std::string format_bytes(std::uint64_t bytes);

}  // namespace moed
