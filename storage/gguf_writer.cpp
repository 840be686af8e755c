// The GGUF writer: builds a complete file image in memory, laid out as llama.cpp lays it out
// (header, metadata, tensor infos, zero padding to the alignment, then each tensor's data
// padded to the alignment), so files it makes load in llama.cpp as well as in moed.
// Values with a type that does not match their stored alternative are programmer errors.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <type_traits>
#include <variant>

#include <fmt/format.h>

#include "storage/gguf.h"

namespace moed::storage {

namespace {

class byte_sink {
public:
    explicit byte_sink(std::vector<std::byte>& out) : out_(out) {}

    template <typename T>
    void put(T value) {
        static_assert(std::is_trivially_copyable_v<T>);
        const auto* p = reinterpret_cast<const std::byte*>(&value);
        out_.insert(out_.end(), p, p + sizeof(T));
    }
    void put_string(std::string_view s) {
        put<std::uint64_t>(s.size());
        const auto* p = reinterpret_cast<const std::byte*>(s.data());
        out_.insert(out_.end(), p, p + s.size());
    }
    void pad_to(std::uint64_t alignment) {
        const std::uint64_t size = out_.size();
        const std::uint64_t padded = (size + alignment - 1) / alignment * alignment;
        out_.resize(static_cast<std::size_t>(padded), std::byte{0});
    }
    void put_bytes(const std::vector<std::byte>& bytes) {
        out_.insert(out_.end(), bytes.begin(), bytes.end());
    }

    // The value's payload, without its type tag (arrays carry their element type).
    void put_value(const gguf_value& v) {
        auto as_u = [&] {
            MOED_ASSERT(std::holds_alternative<std::uint64_t>(v.data));
            return std::get<std::uint64_t>(v.data);
        };
        auto as_i = [&] {
            MOED_ASSERT(std::holds_alternative<std::int64_t>(v.data));
            return std::get<std::int64_t>(v.data);
        };
        auto as_f = [&] {
            MOED_ASSERT(std::holds_alternative<double>(v.data));
            return std::get<double>(v.data);
        };
        switch (v.type) {
            case gguf_value_type::u8: put(static_cast<std::uint8_t>(as_u())); return;
            case gguf_value_type::i8: put(static_cast<std::int8_t>(as_i())); return;
            case gguf_value_type::u16: put(static_cast<std::uint16_t>(as_u())); return;
            case gguf_value_type::i16: put(static_cast<std::int16_t>(as_i())); return;
            case gguf_value_type::u32: put(static_cast<std::uint32_t>(as_u())); return;
            case gguf_value_type::i32: put(static_cast<std::int32_t>(as_i())); return;
            case gguf_value_type::u64: put(as_u()); return;
            case gguf_value_type::i64: put(as_i()); return;
            case gguf_value_type::f32: put(static_cast<float>(as_f())); return;
            case gguf_value_type::f64: put(as_f()); return;
            case gguf_value_type::boolean:
                MOED_ASSERT(std::holds_alternative<bool>(v.data));
                put(static_cast<std::uint8_t>(std::get<bool>(v.data) ? 1 : 0));
                return;
            case gguf_value_type::string:
                MOED_ASSERT(std::holds_alternative<std::string>(v.data));
                put_string(std::get<std::string>(v.data));
                return;
            case gguf_value_type::array: {
                MOED_ASSERT(std::holds_alternative<gguf_array>(v.data));
                const gguf_array& arr = std::get<gguf_array>(v.data);
                put(static_cast<std::uint32_t>(arr.element_type));
                put<std::uint64_t>(arr.values.size());
                for (const gguf_value& e : arr.values) {
                    MOED_ASSERT(e.type == arr.element_type);
                    put_value(e);
                }
                return;
            }
        }
        MOED_ASSERT(false && "unknown gguf_value_type");
    }

private:
    std::vector<std::byte>& out_;
};

}  // namespace

gguf_writer::gguf_writer(std::uint32_t version, std::uint64_t alignment)
    : version_(version), alignment_(alignment) {
    MOED_ASSERT(alignment != 0 && (alignment & (alignment - 1)) == 0);
}

void gguf_writer::set(std::string key, gguf_value value) {
    for (auto& [k, v] : kv_) {
        if (k == key) {
            v = std::move(value);
            return;
        }
    }
    kv_.emplace_back(std::move(key), std::move(value));
}

void gguf_writer::set_u32(std::string key, std::uint32_t v) {
    set(std::move(key), gguf_value{gguf_value_type::u32, std::uint64_t{v}});
}
void gguf_writer::set_u64(std::string key, std::uint64_t v) {
    set(std::move(key), gguf_value{gguf_value_type::u64, v});
}
void gguf_writer::set_i32(std::string key, std::int32_t v) {
    set(std::move(key), gguf_value{gguf_value_type::i32, std::int64_t{v}});
}
void gguf_writer::set_f32(std::string key, float v) {
    set(std::move(key), gguf_value{gguf_value_type::f32, double{v}});
}
void gguf_writer::set_bool(std::string key, bool v) {
    set(std::move(key), gguf_value{gguf_value_type::boolean, v});
}
void gguf_writer::set_string(std::string key, std::string v) {
    set(std::move(key), gguf_value{gguf_value_type::string, std::move(v)});
}
void gguf_writer::set_string_array(std::string key, const std::vector<std::string>& v) {
    gguf_array arr;
    arr.element_type = gguf_value_type::string;
    arr.values.reserve(v.size());
    for (const std::string& s : v) arr.values.push_back({gguf_value_type::string, s});
    set(std::move(key), gguf_value{gguf_value_type::array, std::move(arr)});
}
void gguf_writer::set_i32_array(std::string key, const std::vector<std::int32_t>& v) {
    gguf_array arr;
    arr.element_type = gguf_value_type::i32;
    arr.values.reserve(v.size());
    for (std::int32_t x : v) arr.values.push_back({gguf_value_type::i32, std::int64_t{x}});
    set(std::move(key), gguf_value{gguf_value_type::array, std::move(arr)});
}
void gguf_writer::set_f32_array(std::string key, const std::vector<float>& v) {
    gguf_array arr;
    arr.element_type = gguf_value_type::f32;
    arr.values.reserve(v.size());
    for (float x : v) arr.values.push_back({gguf_value_type::f32, double{x}});
    set(std::move(key), gguf_value{gguf_value_type::array, std::move(arr)});
}

void gguf_writer::add_tensor(std::string name, tensor_type type, std::vector<std::int64_t> ne,
                             std::vector<std::byte> data) {
    MOED_ASSERT(!ne.empty() && ne.size() <= static_cast<std::size_t>(gguf_max_dims));
    MOED_ASSERT(name.size() < gguf_max_tensor_name_bytes);  // llama.cpp rejects longer names
    const auto traits = traits_of(static_cast<std::uint32_t>(type));
    MOED_ASSERT(traits.has_value());
    std::int64_t n = 1;
    for (std::int64_t d : ne) {
        MOED_ASSERT(d > 0);
        n *= d;
    }
    MOED_ASSERT(ne[0] % traits->block_elems == 0);
    MOED_ASSERT(data.size() == static_cast<std::size_t>(n / traits->block_elems) * traits->block_bytes);
    tensors_.push_back({std::move(name), type, std::move(ne), std::move(data)});
}

std::vector<std::byte> gguf_writer::serialize_header() const {
    // A non-default alignment must be in the file for a reader to find the data; it is
    // added after the caller's keys unless the caller set general.alignment itself (which
    // lets tests write a file whose key disagrees with its layout).
    bool has_alignment_key = false;
    for (const auto& [k, v] : kv_) has_alignment_key = has_alignment_key || k == "general.alignment";
    const bool add_alignment_key = !has_alignment_key && alignment_ != 32;

    std::vector<std::byte> out;
    byte_sink sink(out);
    for (char c : {'G', 'G', 'U', 'F'}) out.push_back(static_cast<std::byte>(c));
    sink.put<std::uint32_t>(version_);
    sink.put<std::uint64_t>(tensors_.size());
    sink.put<std::uint64_t>(kv_.size() + (add_alignment_key ? 1 : 0));
    for (const auto& [key, value] : kv_) {
        sink.put_string(key);
        sink.put(static_cast<std::uint32_t>(value.type));
        sink.put_value(value);
    }
    if (add_alignment_key) {
        sink.put_string("general.alignment");
        sink.put(static_cast<std::uint32_t>(gguf_value_type::u32));
        sink.put(static_cast<std::uint32_t>(alignment_));
    }

    std::uint64_t offset = 0;
    for (const tensor& t : tensors_) {
        sink.put_string(t.name);
        sink.put<std::uint32_t>(static_cast<std::uint32_t>(t.ne.size()));
        for (std::int64_t d : t.ne) sink.put<std::int64_t>(d);
        sink.put(static_cast<std::uint32_t>(t.type));
        sink.put<std::uint64_t>(offset);
        offset += padded(t.data.size());
    }
    sink.pad_to(alignment_);
    return out;
}

std::uint64_t gguf_writer::padded(std::uint64_t bytes) const noexcept {
    return (bytes + alignment_ - 1) / alignment_ * alignment_;
}

std::vector<std::byte> gguf_writer::serialize() const {
    std::vector<std::byte> out = serialize_header();
    for (const tensor& t : tensors_) {
        out.insert(out.end(), t.data.begin(), t.data.end());
        out.resize(out.size() + (padded(t.data.size()) - t.data.size()), std::byte{0});
    }
    return out;
}

result<void> gguf_writer::write(const std::string& path) const {
    // Streams the header, then each tensor straight from its buffer: a multi-GiB model is
    // never copied into one file image.
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        const int err = errno;
        return make_error(errc::io, "{}: cannot create: {}", path, std::strerror(err));
    }
    std::uint64_t total = 0;
    auto put = [&](const std::byte* data, std::size_t size) -> result<void> {
        std::size_t done = 0;
        while (done < size) {
            const ssize_t n = ::write(fd, data + done, size - done);
            if (n < 0) {
                if (errno == EINTR) continue;
                const int err = errno;
                return make_error(errc::io, "{}: write failed after {} bytes: {}", path, total + done,
                                  std::strerror(err));
            }
            done += static_cast<std::size_t>(n);
        }
        total += size;
        return {};
    };
    auto write_all = [&]() -> result<void> {
        const std::vector<std::byte> header = serialize_header();
        MOED_TRY(put(header.data(), header.size()));
        const std::vector<std::byte> zeros(alignment_, std::byte{0});
        for (const tensor& t : tensors_) {
            MOED_TRY(put(t.data.data(), t.data.size()));
            MOED_TRY(put(zeros.data(), padded(t.data.size()) - t.data.size()));
        }
        return {};
    };
    auto written = write_all();
    if (::close(fd) != 0 && written) {
        const int err = errno;
        return make_error(errc::io, "{}: close failed: {}", path, std::strerror(err));
    }
    return written;
}

}  // namespace moed::storage
