// GGUF model files (versions 2 and 3): a reader that trusts nothing in the file, and a
// writer for tests and tools.
//
// The reader maps the file read-only and parses the header into owned structures; tensor
// data is reached through the mapping, so a model is never held twice. Every length, count,
// type and offset is checked before use; a bad file yields an error naming the file, the
// field and its byte offset.
// Threads: a gguf_file is immutable after open(); any thread may read it.
// A file shortened by another process while mapped faults on access (SIGBUS), which no
// parser check can prevent; so a long-lived owner (the daemon's model) copies what it needs
// with positional reads and calls release_mapping() once it is done, after which nothing
// reaches the file through this object (metadata and tensor infos stay).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"
#include "common/tensor_type.h"

namespace moed::storage {

// Metadata value types, numbered as in the file format.
enum class gguf_value_type : std::uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
std::string_view value_type_name(gguf_value_type type) noexcept;

struct gguf_value;
// An array: the element type and its values (arrays may nest).
struct gguf_array {
    gguf_value_type element_type = gguf_value_type::u8;
    std::vector<gguf_value> values;
};

struct gguf_value {
    gguf_value_type type = gguf_value_type::u8;
    std::variant<std::uint64_t, std::int64_t, double, bool, std::string, gguf_array> data;

    // Typed views; each returns an error naming `key` when the stored type does not fit.
    // Integer getters accept any integer type whose value fits the requested range.
    result<std::uint64_t> as_uint(std::string_view key) const;
    result<std::int64_t> as_int(std::string_view key) const;
    result<double> as_float(std::string_view key) const;
    result<bool> as_bool(std::string_view key) const;
    result<std::string_view> as_string(std::string_view key) const;
    result<const gguf_array*> as_array(std::string_view key) const;
};

inline constexpr int gguf_max_dims = 4;
// llama.cpp (GGML_MAX_NAME) rejects tensor names of this many bytes or more; the writer
// refuses them, the reader accepts them (the limit is ggml's, not the format's).
inline constexpr std::size_t gguf_max_tensor_name_bytes = 64;

struct gguf_tensor_info {
    std::string name;
    tensor_type type = tensor_type::f32;
    int n_dims = 0;
    // ne[0] is the innermost (contiguous) dimension, as in ggml; unused dims are 1.
    std::int64_t ne[gguf_max_dims] = {1, 1, 1, 1};
    std::uint64_t offset = 0;       // absolute byte offset of the data in the file
    std::uint64_t size_bytes = 0;   // bytes of data
    std::int64_t n_elements() const noexcept { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// Limits on what a header may claim; anything above is reported as corrupt rather than
// allocated.
struct gguf_limits {
    std::uint64_t max_string_bytes = 64ull << 20;
    std::uint64_t max_array_elems = 1ull << 26;
    std::uint64_t max_kv = 1ull << 20;
    std::uint64_t max_tensors = 1ull << 20;
    int max_array_depth = 8;
};

class gguf_file {
public:
    // Opens and validates `path`. Checks: magic, version (2 or 3), counts against limits and
    // the file size, every string and array length, value types, tensor dims (1..4,
    // positive, no overflow), types known and sizes consistent with their blocks,
    // general.alignment (a power of two), tensor data inside the file, aligned and not
    // overlapping.
    static result<std::unique_ptr<gguf_file>> open(const std::string& path,
                                                   const gguf_limits& limits = {});
    ~gguf_file();
    gguf_file(const gguf_file&) = delete;
    gguf_file& operator=(const gguf_file&) = delete;

    const std::string& path() const noexcept { return path_; }
    std::uint32_t version() const noexcept { return version_; }
    std::uint64_t file_size() const noexcept { return file_size_; }
    std::uint64_t alignment() const noexcept { return alignment_; }
    std::uint64_t data_offset() const noexcept { return data_offset_; }

    // Metadata in file order (lookup by key through find()).
    const std::vector<std::pair<std::string, gguf_value>>& metadata() const noexcept { return kv_; }
    const gguf_value* find(std::string_view key) const noexcept;
    // Required-key getters: a missing key or a wrong type is an error naming file and key.
    result<std::uint64_t> get_uint(std::string_view key) const;
    result<std::int64_t> get_int(std::string_view key) const;
    result<bool> get_bool(std::string_view key) const;
    result<double> get_float(std::string_view key) const;
    result<std::string_view> get_string(std::string_view key) const;
    result<const gguf_array*> get_array(std::string_view key) const;

    const std::vector<gguf_tensor_info>& tensors() const noexcept { return tensors_; }
    const gguf_tensor_info* find_tensor(std::string_view name) const noexcept;
    // A required tensor: missing is an error naming the file and the tensor.
    result<const gguf_tensor_info*> get_tensor(std::string_view name) const;

    // The bytes of a tensor inside the read-only mapping. Only while mapped().
    const std::byte* tensor_data(const gguf_tensor_info& info) const noexcept;
    std::span<const std::byte> mapping() const noexcept;
    bool mapped() const noexcept { return map_ != nullptr; }
    // Unmaps the file: tensor_data() and mapping() may no longer be called.
    void release_mapping() noexcept;

private:
    gguf_file() = default;
    // Parses and validates the header in the mapping; fills every member below.
    result<void> parse(const gguf_limits& limits);
    // The value of `key`, or not_found naming the file and the key.
    result<const gguf_value*> require(std::string_view key) const;
    std::string path_;
    std::uint32_t version_ = 0;
    std::uint64_t file_size_ = 0;
    std::uint64_t alignment_ = 32;
    std::uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, gguf_value>> kv_;
    std::map<std::string, std::size_t, std::less<>> kv_index_;
    std::vector<gguf_tensor_info> tensors_;
    std::map<std::string, std::size_t, std::less<>> tensor_index_;
    void* map_ = nullptr;
    std::size_t map_bytes_ = 0;
};

// Builds a GGUF file in memory and writes it. Values and tensors keep insertion order;
// set() on an existing key replaces its value in place. The layout is llama.cpp's: the data
// section starts at the header end padded to the alignment, and every tensor's data is
// padded to the alignment (the last one too). A non-default alignment is written as
// general.alignment (u32) after the caller's keys unless the caller set that key itself;
// a caller-set value that disagrees with the constructor's alignment makes a file whose
// layout does not match its key (useful for reader tests only).
// Nested arrays are valid GGUF and round-trip through moed's reader, but llama.cpp's reader
// refuses them; files meant for llama.cpp should not use them.
// Misuse (a value whose type does not match its stored alternative, a tensor whose data
// size does not match its shape, a non-power-of-two alignment) is a programmer error
// (MOED_ASSERT). The writer can also produce deliberately malformed files for reader tests:
// raw header patches are applied by the caller on the returned bytes.
// Threads: not thread-safe; one thread builds and writes a file.
class gguf_writer {
public:
    explicit gguf_writer(std::uint32_t version = 3, std::uint64_t alignment = 32);

    void set(std::string key, gguf_value value);
    void set_u32(std::string key, std::uint32_t v);
    void set_u64(std::string key, std::uint64_t v);
    void set_i32(std::string key, std::int32_t v);
    void set_f32(std::string key, float v);
    void set_bool(std::string key, bool v);
    void set_string(std::string key, std::string v);
    void set_string_array(std::string key, const std::vector<std::string>& v);
    void set_i32_array(std::string key, const std::vector<std::int32_t>& v);
    void set_f32_array(std::string key, const std::vector<float>& v);

    // Adds a tensor; `data` must hold exactly the bytes its type and shape need.
    // ne follows ggml order (ne[0] innermost).
    void add_tensor(std::string name, tensor_type type, std::vector<std::int64_t> ne,
                    std::vector<std::byte> data);

    // The complete file image.
    std::vector<std::byte> serialize() const;
    // The header and tensor infos, padded to the alignment (the data section follows).
    std::vector<std::byte> serialize_header() const;
    result<void> write(const std::string& path) const;

private:
    std::uint64_t padded(std::uint64_t bytes) const noexcept;
    std::uint32_t version_;
    std::uint64_t alignment_;
    std::vector<std::pair<std::string, gguf_value>> kv_;
    struct tensor {
        std::string name;
        tensor_type type;
        std::vector<std::int64_t> ne;
        std::vector<std::byte> data;
    };
    std::vector<tensor> tensors_;
};

}  // namespace moed::storage
