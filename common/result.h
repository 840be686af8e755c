// result<T>: the return type of every operation that can fail for expected, operational
// reasons (bad input, I/O failure, budget exceeded). Method names follow std::expected so
// the type can be swapped for it once the toolchain (g++ 12, nvcc) reaches C++23.
// Programmer errors use MOED_ASSERT instead (common/assert.h).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "common/assert.h"

namespace moed {

// Error categories; fixed underlying type because codes cross the wire.
enum class errc : std::uint16_t {
    invalid_argument = 1,  // a caller-supplied value is out of range or malformed
    bad_file = 2,          // a model/profile file is malformed
    unsupported = 3,       // valid input we cannot handle (architecture, type, version)
    io = 4,                // the OS reported an I/O failure
    not_found = 5,         // a key, tensor or file does not exist
    out_of_memory = 6,     // a budget or allocation limit was exceeded
    cancelled = 7,
    internal = 8,
    no_space = 9,          // a store is at its limit: nothing new fits until something is removed
};

const char* errc_name(errc code) noexcept;

// An error: a code and a message that carries its own context (file, field, offset).
struct error {
    errc code = errc::internal;
    std::string message;
};

// The unexpected-value wrapper, as std::unexpected.
struct unexpected {
    error err;
    explicit unexpected(error e) : err(std::move(e)) {}
    unexpected(errc code, std::string message) : err{code, std::move(message)} {}
};

// Builds an error with a formatted, compile-time checked message.
template <typename... Args>
[[nodiscard]] unexpected make_error(errc code, fmt::format_string<Args...> format, Args&&... args) {
    return unexpected(code, fmt::format(format, std::forward<Args>(args)...));
}

template <typename T>
class [[nodiscard]] result {
public:
    result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
    result(unexpected u) : state_(std::in_place_index<1>, std::move(u.err)) {}

    bool has_value() const noexcept { return state_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & {
        MOED_ASSERT(has_value());
        return std::get<0>(state_);
    }
    const T& value() const& {
        MOED_ASSERT(has_value());
        return std::get<0>(state_);
    }
    T&& value() && {
        MOED_ASSERT(has_value());
        return std::get<0>(std::move(state_));
    }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

    const moed::error& error() const& {
        MOED_ASSERT(!has_value());
        return std::get<1>(state_);
    }
    moed::error&& error() && {
        MOED_ASSERT(!has_value());
        return std::get<1>(std::move(state_));
    }

private:
    std::variant<T, moed::error> state_;
};

template <>
class [[nodiscard]] result<void> {
public:
    result() = default;
    result(unexpected u) : error_(std::move(u.err)), ok_(false) {}

    bool has_value() const noexcept { return ok_; }
    explicit operator bool() const noexcept { return ok_; }
    void value() const { MOED_ASSERT(ok_); }
    const moed::error& error() const& {
        MOED_ASSERT(!ok_);
        return error_;
    }
    moed::error&& error() && {
        MOED_ASSERT(!ok_);
        return std::move(error_);
    }

private:
    moed::error error_;
    bool ok_ = true;
};

// Propagates an error from an expression returning result<U> out of the current function.
#define MOED_TRY(expr)                                                    \
    do {                                                                  \
        auto&& moed_try_r_ = (expr);                                      \
        if (!moed_try_r_) return ::moed::unexpected(std::move(moed_try_r_).error()); \
    } while (0)

// Ignoring an error must be explicit and greppable.
template <typename T>
inline void ignore_error(result<T>&&) noexcept {}

}  // namespace moed
