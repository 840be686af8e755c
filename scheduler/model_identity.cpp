#include "scheduler/model_identity.h"

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

namespace moed::scheduler {

namespace {

constexpr std::size_t k_max_arch_chars = 64;

// FNV-1a, 64 bit: simple, stable across platforms and versions (std::hash is neither).
class fnv1a64 {
public:
    void bytes(const void* data, std::size_t n) noexcept {
        const auto* p = static_cast<const unsigned char*>(data);
        for (std::size_t i = 0; i < n; ++i) {
            h_ ^= p[i];
            h_ *= 0x100000001b3ull;
        }
    }
    // Integers are hashed as 8 little-endian bytes whatever their width, so the hash does
    // not depend on the host's byte order.
    void u64(std::uint64_t v) noexcept {
        unsigned char b[8];
        for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
        bytes(b, 8);
    }
    // Length first, so ("ab", "c") and ("a", "bc") differ.
    void str(std::string_view s) noexcept {
        u64(s.size());
        bytes(s.data(), s.size());
    }
    std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = 0xcbf29ce484222325ull;
};

void hash_value(fnv1a64& h, const storage::gguf_value& v) {
    h.u64(static_cast<std::uint64_t>(v.type));
    std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, std::uint64_t>) {
                h.u64(x);
            } else if constexpr (std::is_same_v<T, std::int64_t>) {
                h.u64(static_cast<std::uint64_t>(x));
            } else if constexpr (std::is_same_v<T, double>) {
                std::uint64_t bits = 0;
                std::memcpy(&bits, &x, sizeof bits);
                h.u64(bits);
            } else if constexpr (std::is_same_v<T, bool>) {
                h.u64(x ? 1 : 0);
            } else if constexpr (std::is_same_v<T, std::string>) {
                h.str(x);
            } else {
                h.u64(static_cast<std::uint64_t>(x.element_type));
                h.u64(x.values.size());
                for (const storage::gguf_value& e : x.values) hash_value(h, e);
            }
        },
        v.data);
}

}  // namespace

std::string model_identity(const storage::gguf_file& file) {
    fnv1a64 h;
    h.u64(file.metadata().size());
    for (const auto& [key, value] : file.metadata()) {
        h.str(key);
        hash_value(h, value);
    }
    h.u64(file.tensors().size());
    for (const storage::gguf_tensor_info& t : file.tensors()) {
        h.str(t.name);
        h.u64(static_cast<std::uint64_t>(t.type));
        h.u64(static_cast<std::uint64_t>(t.n_dims));
        for (std::int64_t ne : t.ne) h.u64(static_cast<std::uint64_t>(ne));
        h.u64(t.offset);
    }
    std::string arch = "unknown";
    if (const storage::gguf_value* a = file.find("general.architecture")) {
        if (auto s = a->as_string("general.architecture"); s && !s->empty()) arch = std::string(*s);
    }
    // The name comes from an untrusted file and ends up in file headers, JSON and logs:
    // kept short and plain.
    if (arch.size() > k_max_arch_chars) arch.resize(k_max_arch_chars);
    for (char& c : arch) {
        const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                           c == '-' || c == '.';
        if (!plain) c = '_';
    }
    return fmt::format("{}:{:016x}", arch, h.value());
}

}  // namespace moed::scheduler
