#include "scheduler/model_identity.h"

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

namespace moed::scheduler {

namespace {

// FNV-1a, 64 bits: simple, stable across platforms and releases (the identity is stored in
// files), and good enough to tell models apart (this is not a defence against forgery).
class fnv1a {
public:
    void bytes(const void* data, std::size_t n) noexcept {
        const auto* p = static_cast<const unsigned char*>(data);
        for (std::size_t i = 0; i < n; ++i) {
            h_ ^= p[i];
            h_ *= 0x100000001b3ull;
        }
    }
    // Integers are hashed little-endian whatever the host order.
    void u64(std::uint64_t v) noexcept {
        unsigned char b[8];
        for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
        bytes(b, sizeof b);
    }
    // Length-prefixed, so ("ab","c") and ("a","bc") differ.
    void text(std::string_view s) noexcept {
        u64(s.size());
        bytes(s.data(), s.size());
    }
    std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = 0xcbf29ce484222325ull;
};

void hash_value(fnv1a& h, const storage::gguf_value& v) {
    h.u64(static_cast<std::uint64_t>(v.type));
    if (const auto* u = std::get_if<std::uint64_t>(&v.data)) {
        h.u64(*u);
    } else if (const auto* i = std::get_if<std::int64_t>(&v.data)) {
        h.u64(static_cast<std::uint64_t>(*i));
    } else if (const auto* f = std::get_if<double>(&v.data)) {
        h.u64(std::bit_cast<std::uint64_t>(*f));
    } else if (const auto* b = std::get_if<bool>(&v.data)) {
        h.u64(*b ? 1 : 0);
    } else if (const auto* s = std::get_if<std::string>(&v.data)) {
        h.text(*s);
    } else if (const auto* a = std::get_if<storage::gguf_array>(&v.data)) {
        h.u64(static_cast<std::uint64_t>(a->element_type));
        h.u64(a->values.size());
        for (const storage::gguf_value& e : a->values) hash_value(h, e);
    }
}

}  // namespace

std::string model_identity(const storage::gguf_file& file) {
    fnv1a h;
    h.u64(file.metadata().size());
    for (const auto& [key, value] : file.metadata()) {
        h.text(key);
        hash_value(h, value);
    }
    h.u64(file.tensors().size());
    for (const storage::gguf_tensor_info& t : file.tensors()) {
        h.text(t.name);
        h.u64(static_cast<std::uint64_t>(t.type));
        h.u64(static_cast<std::uint64_t>(t.n_dims));
        for (std::int64_t ne : t.ne) h.u64(static_cast<std::uint64_t>(ne));
        h.u64(t.offset);
    }
    std::string_view arch = "unknown";
    if (const storage::gguf_value* v = file.find("general.architecture")) {
        if (const auto* s = std::get_if<std::string>(&v->data); s != nullptr && !s->empty()) arch = *s;
    }
    return fmt::format("{}:{:016x}", arch, h.value());
}

}  // namespace moed::scheduler
