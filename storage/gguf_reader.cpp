// The GGUF reader: maps the file read-only and parses its header with a bounds-checked
// cursor. Nothing read from the file is trusted: every count and length is checked against
// gguf_limits and against the bytes left in the file before anything is allocated, and every
// error names the file, the field and the byte offset where that field was read.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "common/assert.h"
#include "common/log.h"
#include "storage/gguf.h"

namespace moed::storage {

std::string_view value_type_name(gguf_value_type type) noexcept {
    switch (type) {
        case gguf_value_type::u8: return "u8";
        case gguf_value_type::i8: return "i8";
        case gguf_value_type::u16: return "u16";
        case gguf_value_type::i16: return "i16";
        case gguf_value_type::u32: return "u32";
        case gguf_value_type::i32: return "i32";
        case gguf_value_type::f32: return "f32";
        case gguf_value_type::boolean: return "bool";
        case gguf_value_type::string: return "string";
        case gguf_value_type::array: return "array";
        case gguf_value_type::u64: return "u64";
        case gguf_value_type::i64: return "i64";
        case gguf_value_type::f64: return "f64";
    }
    return "unknown";
}

// ---------------------------------------------------------------------------------------
// gguf_value

namespace {

bool is_unsigned_type(gguf_value_type t) noexcept {
    return t == gguf_value_type::u8 || t == gguf_value_type::u16 || t == gguf_value_type::u32 ||
           t == gguf_value_type::u64;
}
bool is_signed_type(gguf_value_type t) noexcept {
    return t == gguf_value_type::i8 || t == gguf_value_type::i16 || t == gguf_value_type::i32 ||
           t == gguf_value_type::i64;
}

unexpected wrong_type(std::string_view key, gguf_value_type have, std::string_view want) {
    return make_error(errc::bad_file, "key '{}' has type {}, expected {}", key,
                      value_type_name(have), want);
}

}  // namespace

result<std::uint64_t> gguf_value::as_uint(std::string_view key) const {
    if (const auto* u = std::get_if<std::uint64_t>(&data); u && is_unsigned_type(type)) return *u;
    if (const auto* i = std::get_if<std::int64_t>(&data); i && is_signed_type(type)) {
        if (*i < 0) {
            return make_error(errc::bad_file, "key '{}' ({}) is {}, expected a non-negative integer",
                              key, value_type_name(type), *i);
        }
        return static_cast<std::uint64_t>(*i);
    }
    return wrong_type(key, type, "an unsigned integer");
}

result<std::int64_t> gguf_value::as_int(std::string_view key) const {
    if (const auto* i = std::get_if<std::int64_t>(&data); i && is_signed_type(type)) return *i;
    if (const auto* u = std::get_if<std::uint64_t>(&data); u && is_unsigned_type(type)) {
        if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            return make_error(errc::bad_file, "key '{}' ({}) is {}, which does not fit an i64", key,
                              value_type_name(type), *u);
        }
        return static_cast<std::int64_t>(*u);
    }
    return wrong_type(key, type, "an integer");
}

result<double> gguf_value::as_float(std::string_view key) const {
    if (const auto* d = std::get_if<double>(&data);
        d && (type == gguf_value_type::f32 || type == gguf_value_type::f64)) {
        return *d;
    }
    return wrong_type(key, type, "f32 or f64");
}

result<bool> gguf_value::as_bool(std::string_view key) const {
    if (const auto* b = std::get_if<bool>(&data); b && type == gguf_value_type::boolean) return *b;
    return wrong_type(key, type, "bool");
}

result<std::string_view> gguf_value::as_string(std::string_view key) const {
    if (const auto* s = std::get_if<std::string>(&data); s && type == gguf_value_type::string) {
        return std::string_view(*s);
    }
    return wrong_type(key, type, "string");
}

result<const gguf_array*> gguf_value::as_array(std::string_view key) const {
    if (const auto* a = std::get_if<gguf_array>(&data); a && type == gguf_value_type::array) {
        return a;
    }
    return wrong_type(key, type, "array");
}

// ---------------------------------------------------------------------------------------
// Parsing

namespace {

constexpr char gguf_magic[4] = {'G', 'G', 'U', 'F'};

// Smallest number of bytes one element of a type can occupy in the file; used to reject a
// count before allocating for it.
std::uint64_t min_encoded_bytes(gguf_value_type t) noexcept {
    switch (t) {
        case gguf_value_type::u8:
        case gguf_value_type::i8:
        case gguf_value_type::boolean: return 1;
        case gguf_value_type::u16:
        case gguf_value_type::i16: return 2;
        case gguf_value_type::u32:
        case gguf_value_type::i32:
        case gguf_value_type::f32: return 4;
        case gguf_value_type::u64:
        case gguf_value_type::i64:
        case gguf_value_type::f64:
        case gguf_value_type::string: return 8;   // the length, then the bytes
        case gguf_value_type::array: return 12;   // element type and count
    }
    return 1;
}

bool known_value_type(std::uint32_t raw) noexcept { return raw <= 12; }

// The most elements reserved ahead of parsing them; vectors grow past it as elements
// actually arrive.
constexpr std::uint64_t max_reserve = 1u << 16;

// Describes where in the header a field sits, formatted only when an error is reported: a
// base ("metadata key #3 'general.name'") and the array indices below it.
struct field_path {
    const std::string& base;
    std::vector<std::uint64_t>& indices;

    std::string describe(std::string_view field) const {
        std::string out = base;
        for (std::uint64_t i : indices) out += fmt::format("[{}]", i);
        if (!field.empty()) {
            out += ' ';
            out += field;
        }
        return out;
    }
};

class header_parser {
public:
    header_parser(const std::byte* data, std::uint64_t size, const std::string& path,
                  const gguf_limits& limits)
        : data_(data), size_(size), path_(path), limits_(limits) {}

    std::uint64_t pos() const noexcept { return pos_; }
    std::uint64_t left() const noexcept { return size_ - pos_; }

    // An error about the field read at byte `at`.
    unexpected fail(std::uint64_t at, std::string_view field, std::string_view what,
                    errc code = errc::bad_file) const {
        return make_error(code, "{}: {} at byte {}: {}", path_, field, at, what);
    }

    template <typename T>
    result<T> read(std::string_view field) {
        static_assert(std::is_trivially_copyable_v<T>);
        if (left() < sizeof(T)) return truncated(field, sizeof(T));
        T value;
        std::memcpy(&value, data_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return value;
    }
    // As read(), naming the field lazily through `where`.
    template <typename T>
    result<T> read(const field_path& where, std::string_view field) {
        if (left() < sizeof(T)) return truncated(where.describe(field), sizeof(T));
        T value;
        std::memcpy(&value, data_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return value;
    }

    unexpected truncated(std::string_view field, std::uint64_t need) const {
        return fail(pos_, field,
                    fmt::format("file truncated: needs {} bytes, {} left", need, left()));
    }

    // A string: u64 length, then the bytes. `length_field` names the length ("key length").
    result<std::string> read_string(const field_path& where, std::string_view length_field) {
        const std::uint64_t at = pos_;
        auto len = read<std::uint64_t>(where, length_field);
        if (!len) return unexpected(std::move(len).error());
        if (*len > limits_.max_string_bytes) {
            return fail(at, where.describe(length_field),
                        fmt::format("{} bytes exceeds the limit of {}", *len,
                                    limits_.max_string_bytes));
        }
        if (*len > left()) {
            return fail(at, where.describe(length_field),
                        fmt::format("{} bytes, but only {} bytes are left in the file", *len,
                                    left()));
        }
        std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(*len));
        pos_ += *len;
        return s;
    }

    result<gguf_value> read_value(gguf_value_type type, const field_path& where, int depth);

    const gguf_limits& limits() const noexcept { return limits_; }

private:
    const std::byte* data_;
    std::uint64_t size_;
    std::uint64_t pos_ = 0;
    const std::string& path_;
    const gguf_limits& limits_;
};

result<gguf_value> header_parser::read_value(gguf_value_type type, const field_path& where,
                                             int depth) {
    gguf_value v;
    v.type = type;
    auto scalar = [&]<typename T, typename Stored>() -> result<gguf_value> {
        auto r = read<T>(where, "value");
        if (!r) return unexpected(std::move(r).error());
        v.data = static_cast<Stored>(*r);
        return std::move(v);
    };
    switch (type) {
        case gguf_value_type::u8: return scalar.operator()<std::uint8_t, std::uint64_t>();
        case gguf_value_type::i8: return scalar.operator()<std::int8_t, std::int64_t>();
        case gguf_value_type::u16: return scalar.operator()<std::uint16_t, std::uint64_t>();
        case gguf_value_type::i16: return scalar.operator()<std::int16_t, std::int64_t>();
        case gguf_value_type::u32: return scalar.operator()<std::uint32_t, std::uint64_t>();
        case gguf_value_type::i32: return scalar.operator()<std::int32_t, std::int64_t>();
        case gguf_value_type::u64: return scalar.operator()<std::uint64_t, std::uint64_t>();
        case gguf_value_type::i64: return scalar.operator()<std::int64_t, std::int64_t>();
        case gguf_value_type::f32: return scalar.operator()<float, double>();
        case gguf_value_type::f64: return scalar.operator()<double, double>();
        case gguf_value_type::boolean: {
            const std::uint64_t at = pos_;
            auto r = read<std::uint8_t>(where, "value");
            if (!r) return unexpected(std::move(r).error());
            if (*r > 1) {
                return fail(at, where.describe("value"),
                            fmt::format("bool byte is {}, expected 0 or 1", *r));
            }
            v.data = *r != 0;
            return v;
        }
        case gguf_value_type::string: {
            auto s = read_string(where, "string length");
            if (!s) return unexpected(std::move(s).error());
            v.data = std::move(*s);
            return v;
        }
        case gguf_value_type::array: {
            if (depth >= limits_.max_array_depth) {
                return fail(pos_, where.describe("array"),
                            fmt::format("arrays nested deeper than the limit of {}",
                                        limits_.max_array_depth));
            }
            const std::uint64_t type_at = pos_;
            auto raw_elem = read<std::uint32_t>(where, "array element type");
            if (!raw_elem) return unexpected(std::move(raw_elem).error());
            if (!known_value_type(*raw_elem)) {
                return fail(type_at, where.describe("array element type"),
                            fmt::format("unknown value type {}", *raw_elem));
            }
            const auto elem_type = static_cast<gguf_value_type>(*raw_elem);
            const std::uint64_t count_at = pos_;
            auto count = read<std::uint64_t>(where, "array count");
            if (!count) return unexpected(std::move(count).error());
            if (*count > limits_.max_array_elems) {
                return fail(count_at, where.describe("array count"),
                            fmt::format("{} elements exceeds the limit of {}", *count,
                                        limits_.max_array_elems));
            }
            const std::uint64_t min_bytes = min_encoded_bytes(elem_type);
            if (*count > left() / min_bytes) {
                return fail(count_at, where.describe("array count"),
                            fmt::format("{} elements of type {} need at least {} bytes, but only "
                                        "{} bytes are left in the file",
                                        *count, value_type_name(elem_type),
                                        // count <= 2^26 and min_bytes <= 12: no overflow.
                                        *count * min_bytes, left()));
            }
            gguf_array arr;
            arr.element_type = elem_type;
            // The count only passed a check against the bytes left, which include the tensor
            // data; reserve a bounded amount so a lying count cannot claim memory up front.
            arr.values.reserve(static_cast<std::size_t>(std::min(*count, max_reserve)));
            where.indices.push_back(0);
            for (std::uint64_t i = 0; i < *count; ++i) {
                where.indices.back() = i;
                auto elem = read_value(elem_type, where, depth + 1);
                if (!elem) {
                    where.indices.pop_back();
                    return unexpected(std::move(elem).error());
                }
                arr.values.push_back(std::move(*elem));
            }
            where.indices.pop_back();
            v.data = std::move(arr);
            return v;
        }
    }
    return fail(pos_, where.describe("value"), "unknown value type");  // unreachable
}

bool is_power_of_two(std::uint64_t x) noexcept { return x != 0 && (x & (x - 1)) == 0; }

// Where a tensor's fields were read, kept to report layout errors found after the header.
struct tensor_fields {
    std::uint64_t offset_at = 0;
    std::uint64_t relative_offset = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// gguf_file

gguf_file::~gguf_file() { release_mapping(); }

void gguf_file::release_mapping() noexcept {
    if (map_ != nullptr && ::munmap(map_, map_bytes_) != 0) {
        MOED_LOG_WARN("storage", "{}: munmap failed: {}", path_, std::strerror(errno));
    }
    map_ = nullptr;
    map_bytes_ = 0;
}

result<std::unique_ptr<gguf_file>> gguf_file::open(const std::string& path,
                                                   const gguf_limits& limits) {
    try {
        std::unique_ptr<gguf_file> file(new gguf_file());
        file->path_ = path;

        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            return make_error(err == ENOENT ? errc::not_found : errc::io, "{}: cannot open: {}",
                              path, std::strerror(err));
        }
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            ::close(fd);
            return make_error(errc::io, "{}: cannot stat: {}", path, std::strerror(err));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            return make_error(errc::bad_file, "{}: not a regular file", path);
        }
        file->file_size_ = static_cast<std::uint64_t>(st.st_size);
        if (file->file_size_ == 0) {
            ::close(fd);
            return make_error(errc::bad_file, "{}: magic at byte 0: file is empty", path);
        }
        void* map = ::mmap(nullptr, static_cast<std::size_t>(file->file_size_), PROT_READ,
                           MAP_PRIVATE, fd, 0);
        const int map_err = errno;
        ::close(fd);  // the mapping keeps the file alive
        if (map == MAP_FAILED) {
            return make_error(errc::io, "{}: cannot mmap {} bytes: {}", path, file->file_size_,
                              std::strerror(map_err));
        }
        file->map_ = map;
        file->map_bytes_ = static_cast<std::size_t>(file->file_size_);

        auto parsed = file->parse(limits);
        if (!parsed) return unexpected(std::move(parsed).error());
        return file;
    } catch (const std::bad_alloc&) {
        return make_error(errc::out_of_memory, "{}: out of memory while reading the header", path);
    } catch (const std::exception& e) {
        return make_error(errc::internal, "{}: unexpected failure while reading the header: {}",
                          path, e.what());
    }
}

result<void> gguf_file::parse(const gguf_limits& limits) {
    const auto* base = static_cast<const std::byte*>(map_);
    header_parser p(base, file_size_, path_, limits);
    std::vector<std::uint64_t> no_indices;

    // Magic and version.
    if (file_size_ < 4 || std::memcmp(base, gguf_magic, 4) != 0) {
        std::string seen;
        for (std::uint64_t i = 0; i < std::min<std::uint64_t>(4, file_size_); ++i) {
            const auto c = static_cast<unsigned char>(base[i]);
            seen += (c >= 0x20 && c < 0x7f) ? fmt::format("{}", static_cast<char>(c))
                                            : fmt::format("\\x{:02x}", c);
        }
        return p.fail(0, "magic",
                      fmt::format("expected \"GGUF\", found \"{}\" (not a GGUF file{})", seen,
                                  file_size_ < 4 ? ", or truncated" : ""));
    }
    ignore_error(p.read<std::uint32_t>("magic"));  // checked above; this moves the cursor
    const std::uint64_t version_at = p.pos();
    auto version = p.read<std::uint32_t>("version");
    if (!version) return unexpected(std::move(version).error());
    if (*version != 2 && *version != 3) {
        std::string why = fmt::format("GGUF version {} is not supported (only 2 and 3)", *version);
        if (*version == 1) why += "; convert the model again with a current llama.cpp";
        if ((*version & 0xffffu) == 0 && *version != 0) why += "; the file may be big-endian";
        return p.fail(version_at, "version", why, errc::unsupported);
    }
    version_ = *version;

    const std::uint64_t n_tensors_at = p.pos();
    auto n_tensors = p.read<std::uint64_t>("tensor count");
    if (!n_tensors) return unexpected(std::move(n_tensors).error());
    const std::uint64_t n_kv_at = p.pos();
    auto n_kv = p.read<std::uint64_t>("metadata key count");
    if (!n_kv) return unexpected(std::move(n_kv).error());

    // A tensor info takes at least 32 bytes (name length, n_dims, one dim, type, offset); a
    // key-value pair at least 13 (key length, type, a one-byte value).
    constexpr std::uint64_t min_tensor_info_bytes = 8 + 4 + 8 + 4 + 8;
    constexpr std::uint64_t min_kv_bytes = 8 + 4 + 1;
    if (*n_tensors > limits.max_tensors) {
        return p.fail(n_tensors_at, "tensor count",
                      fmt::format("{} exceeds the limit of {}", *n_tensors, limits.max_tensors));
    }
    if (*n_tensors > p.left() / min_tensor_info_bytes) {
        return p.fail(n_tensors_at, "tensor count",
                      fmt::format("{} tensors cannot fit in the {} bytes left in the file",
                                  *n_tensors, p.left()));
    }
    if (*n_kv > limits.max_kv) {
        return p.fail(n_kv_at, "metadata key count",
                      fmt::format("{} exceeds the limit of {}", *n_kv, limits.max_kv));
    }
    if (*n_kv > p.left() / min_kv_bytes) {
        return p.fail(n_kv_at, "metadata key count",
                      fmt::format("{} keys cannot fit in the {} bytes left in the file", *n_kv,
                                  p.left()));
    }

    // Metadata.
    kv_.reserve(static_cast<std::size_t>(std::min(*n_kv, max_reserve)));
    for (std::uint64_t i = 0; i < *n_kv; ++i) {
        std::string where_base = fmt::format("metadata key #{}", i);
        const field_path unnamed{where_base, no_indices};
        const std::uint64_t key_at = p.pos();
        auto key = p.read_string(unnamed, "key length");
        if (!key) return unexpected(std::move(key).error());
        where_base = fmt::format("metadata key #{} '{}'", i, *key);
        const field_path where{where_base, no_indices};
        if (kv_index_.find(*key) != kv_index_.end()) {
            return p.fail(key_at, where.describe("key"), "duplicate key");
        }
        const std::uint64_t type_at = p.pos();
        auto raw_type = p.read<std::uint32_t>(where, "value type");
        if (!raw_type) return unexpected(std::move(raw_type).error());
        if (!known_value_type(*raw_type)) {
            return p.fail(type_at, where.describe("value type"),
                          fmt::format("unknown value type {}", *raw_type));
        }
        const std::uint64_t value_at = p.pos();
        auto value = p.read_value(static_cast<gguf_value_type>(*raw_type), where, 0);
        if (!value) return unexpected(std::move(value).error());

        if (*key == "general.alignment") {
            if (value->type != gguf_value_type::u32) {
                return p.fail(type_at, where.describe("value type"),
                              fmt::format("is {}, expected u32",
                                          value_type_name(value->type)));
            }
            const auto a = std::get<std::uint64_t>(value->data);
            if (!is_power_of_two(a)) {
                return p.fail(value_at, where.describe("value"),
                              fmt::format("alignment {} is not a power of two", a));
            }
            alignment_ = a;
        }
        kv_index_.emplace(*key, kv_.size());
        kv_.emplace_back(std::move(*key), std::move(*value));
    }

    // Tensor infos.
    tensors_.reserve(static_cast<std::size_t>(std::min(*n_tensors, max_reserve)));
    std::vector<tensor_fields> fields;
    fields.reserve(static_cast<std::size_t>(std::min(*n_tensors, max_reserve)));
    for (std::uint64_t i = 0; i < *n_tensors; ++i) {
        std::string where_base = fmt::format("tensor #{}", i);
        const field_path unnamed{where_base, no_indices};
        const std::uint64_t name_at = p.pos();
        auto name = p.read_string(unnamed, "name length");
        if (!name) return unexpected(std::move(name).error());
        where_base = fmt::format("tensor '{}'", *name);
        const field_path where{where_base, no_indices};
        if (tensor_index_.find(*name) != tensor_index_.end()) {
            return p.fail(name_at, where.describe("name"), "duplicate tensor name");
        }

        gguf_tensor_info info;
        info.name = std::move(*name);
        const std::uint64_t n_dims_at = p.pos();
        auto n_dims = p.read<std::uint32_t>(where, "n_dims");
        if (!n_dims) return unexpected(std::move(n_dims).error());
        if (*n_dims == 0 || *n_dims > static_cast<std::uint32_t>(gguf_max_dims)) {
            return p.fail(n_dims_at, where.describe("n_dims"),
                          fmt::format("{} dimensions, expected 1 to {}", *n_dims, gguf_max_dims));
        }
        info.n_dims = static_cast<int>(*n_dims);
        std::int64_t n_elements = 1;
        const std::uint64_t ne0_at = p.pos();
        for (int d = 0; d < info.n_dims; ++d) {
            const std::uint64_t ne_at = p.pos();
            static constexpr std::string_view ne_names[gguf_max_dims] = {"ne[0]", "ne[1]", "ne[2]",
                                                                         "ne[3]"};
            const std::string_view ne_field = ne_names[d];
            auto ne = p.read<std::int64_t>(where, ne_field);
            if (!ne) return unexpected(std::move(ne).error());
            if (*ne <= 0) {
                return p.fail(ne_at, where.describe(ne_field),
                              fmt::format("dimension {} is not positive", *ne));
            }
            if (n_elements > std::numeric_limits<std::int64_t>::max() / *ne) {
                return p.fail(ne_at, where.describe(ne_field),
                              fmt::format("dimension {} makes the element count overflow", *ne));
            }
            n_elements *= *ne;
            info.ne[d] = *ne;
        }

        const std::uint64_t type_at = p.pos();
        auto raw_type = p.read<std::uint32_t>(where, "type");
        if (!raw_type) return unexpected(std::move(raw_type).error());
        const auto traits = traits_of(*raw_type);
        if (!traits) {
            return p.fail(type_at, where.describe("type"),
                          fmt::format("unknown tensor type {}", *raw_type));
        }
        info.type = static_cast<tensor_type>(*raw_type);
        if (info.ne[0] % traits->block_elems != 0) {
            return p.fail(ne0_at, where.describe("ne[0]"),
                          fmt::format("{} is not a multiple of the {} block of {} values",
                                      info.ne[0], traits->name, traits->block_elems));
        }
        // Bytes: whole blocks times the block size. A block may take more bytes than it has
        // values (F32: 4 bytes per value), so the product can overflow; check it.
        const std::uint64_t blocks = static_cast<std::uint64_t>(n_elements) / traits->block_elems;
        if (blocks > std::numeric_limits<std::uint64_t>::max() / traits->block_bytes) {
            return p.fail(type_at, where.describe("type"), "the tensor's byte size overflows");
        }
        info.size_bytes = blocks * traits->block_bytes;

        tensor_fields tf;
        tf.offset_at = p.pos();
        auto offset = p.read<std::uint64_t>(where, "offset");
        if (!offset) return unexpected(std::move(offset).error());
        tf.relative_offset = *offset;

        tensor_index_.emplace(info.name, tensors_.size());
        tensors_.push_back(std::move(info));
        fields.push_back(tf);
    }

    // The data section starts at the end of the header, padded to the alignment.
    const std::uint64_t header_end = p.pos();
    data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;  // header_end < 2^63

    for (std::size_t i = 0; i < tensors_.size(); ++i) {
        gguf_tensor_info& t = tensors_[i];
        const tensor_fields& tf = fields[i];
        auto field = [&] { return fmt::format("tensor '{}' offset", t.name); };
        if (tf.relative_offset % alignment_ != 0) {
            return p.fail(tf.offset_at, field(),
                          fmt::format("{} is not a multiple of the alignment {}",
                                      tf.relative_offset, alignment_));
        }
        if (data_offset_ > file_size_ || tf.relative_offset > file_size_ - data_offset_ ||
            t.size_bytes > file_size_ - data_offset_ - tf.relative_offset) {
            return p.fail(tf.offset_at, field(),
                          fmt::format("data [{}, +{} bytes) from the data section at {} runs past "
                                      "the end of the file ({} bytes)",
                                      tf.relative_offset, t.size_bytes, data_offset_, file_size_));
        }
        t.offset = data_offset_ + tf.relative_offset;
    }

    // No two tensors may share bytes.
    std::vector<std::size_t> order(tensors_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return tensors_[a].offset < tensors_[b].offset ||
               (tensors_[a].offset == tensors_[b].offset && a < b);
    });
    for (std::size_t k = 1; k < order.size(); ++k) {
        const gguf_tensor_info& prev = tensors_[order[k - 1]];
        const gguf_tensor_info& cur = tensors_[order[k]];
        if (cur.offset < prev.offset + prev.size_bytes) {  // sizes are never 0
            const std::size_t later = std::max(order[k - 1], order[k]);
            const gguf_tensor_info& reported = tensors_[later];
            const gguf_tensor_info& other = tensors_[later == order[k] ? order[k - 1] : order[k]];
            return p.fail(fields[later].offset_at, fmt::format("tensor '{}' offset", reported.name),
                          fmt::format("data [{}, {}) overlaps tensor '{}' at [{}, {})",
                                      reported.offset, reported.offset + reported.size_bytes,
                                      other.name, other.offset, other.offset + other.size_bytes));
        }
    }
    return {};
}

const gguf_value* gguf_file::find(std::string_view key) const noexcept {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {

template <typename T>
result<T> with_file(const std::string& path, result<T> r) {
    if (r) return r;
    moed::error e = std::move(r).error();
    e.message = fmt::format("{}: {}", path, e.message);
    return unexpected(std::move(e));
}

}  // namespace

result<const gguf_value*> gguf_file::require(std::string_view key) const {
    const gguf_value* v = find(key);
    if (v == nullptr) {
        return make_error(errc::not_found, "{}: missing required key '{}'", path_, key);
    }
    return v;
}

result<std::uint64_t> gguf_file::get_uint(std::string_view key) const {
    auto v = require(key);
    if (!v) return unexpected(std::move(v).error());
    return with_file(path_, (*v)->as_uint(key));
}

result<std::int64_t> gguf_file::get_int(std::string_view key) const {
    auto v = require(key);
    if (!v) return unexpected(std::move(v).error());
    return with_file(path_, (*v)->as_int(key));
}

result<bool> gguf_file::get_bool(std::string_view key) const {
    auto v = require(key);
    if (!v) return unexpected(std::move(v).error());
    return with_file(path_, (*v)->as_bool(key));
}

result<double> gguf_file::get_float(std::string_view key) const {
    auto v = require(key);
    if (!v) return unexpected(std::move(v).error());
    return with_file(path_, (*v)->as_float(key));
}

result<std::string_view> gguf_file::get_string(std::string_view key) const {
    auto v = require(key);
    if (!v) return unexpected(std::move(v).error());
    return with_file(path_, (*v)->as_string(key));
}

result<const gguf_array*> gguf_file::get_array(std::string_view key) const {
    auto v = require(key);
    if (!v) return unexpected(std::move(v).error());
    return with_file(path_, (*v)->as_array(key));
}

const gguf_tensor_info* gguf_file::find_tensor(std::string_view name) const noexcept {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

result<const gguf_tensor_info*> gguf_file::get_tensor(std::string_view name) const {
    const gguf_tensor_info* t = find_tensor(name);
    if (t == nullptr) {
        return make_error(errc::not_found, "{}: missing required tensor '{}'", path_, name);
    }
    return t;
}

const std::byte* gguf_file::tensor_data(const gguf_tensor_info& info) const noexcept {
    MOED_ASSERT(map_ != nullptr);
    return static_cast<const std::byte*>(map_) + info.offset;
}

std::span<const std::byte> gguf_file::mapping() const noexcept {
    MOED_ASSERT(map_ != nullptr);
    return {static_cast<const std::byte*>(map_), map_bytes_};
}

}  // namespace moed::storage
