// MOED_ASSERT: always-on check for programmer errors. It aborts with file and line; it is
// never used for bad input, which returns result<T> errors instead.
#pragma once

namespace moed::detail {
[[noreturn]] void assert_fail(const char* expr, const char* file, int line) noexcept;
}

#define MOED_ASSERT(cond)                                                       \
    do {                                                                        \
        if (!(cond)) [[unlikely]] ::moed::detail::assert_fail(#cond, __FILE__, __LINE__); \
    } while (0)
