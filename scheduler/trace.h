// Routing traces: a compact binary file of what every MoE
// layer's router did for every token, written by the engine's trace recorder (moed and
// moe-run `--trace FILE`) and read by the replay and prediction tools.
//
// File format, version 1. Integers are little-endian; f16 is IEEE half precision (rounded to
// nearest even, kernels/cpu/fp16.h); strings are a u16 byte count then the bytes (no NUL).
//
//   header
//     offset 0   magic             8 bytes "MOETRACE"
//            8   version           u32, 1
//            12  header_bytes      u32, bytes of the whole header (magic included)
//            16  n_layer           u32, 1..trace_max_layers
//            20  n_expert          u32, 1..trace_max_experts
//            24  n_expert_used     u32, 1..min(n_expert, trace_max_experts_used)
//            28  lookahead_depth   u32, 0..trace_max_lookahead_depth
//            32  record_bytes      u32, must equal trace_record_bytes(...) of the above
//            36  model_name        string (<= trace_max_name_bytes)
//                model_id          string (<= trace_max_name_bytes; scheduler::model_identity)
//                n_expert_bytes    u32, 0 or n_layer; then that many u64 (bytes of one
//                                  expert of each layer)
//   records, record_bytes each, in the order they were written (the engine's order: for a
//   batch, layer-major, tokens in batch order within a layer)
//     seq u64 | tag u32 | pos u32 | token i32 | layer u16 (< n_layer) | flags u8 (bit 0:
//     prefill; other bits 0) | chosen: n_expert_used experts (u8 each when n_expert <= 256,
//     else u16), decreasing probability, distinct, < n_expert | probs: n_expert f16 in
//     [0, 1] | lookahead: lookahead_depth x n_expert f16 in [0, 1], row j predicting layer
//     layer + j from the residual stream entering this layer (rows past the last layer 0)
//   tag table
//     magic "MOETTAGS" | n_tags u32 (<= trace_max_tags) | n_tags strings (<= trace_max_tag_bytes)
//     Tag i's name; when the table is not empty every record's tag is below n_tags.
//   footer, the last 24 bytes of the file
//     record_count u64 | tag_table_offset u64 (= header_bytes + record_count * record_bytes)
//     | magic "MOETEND" and a zero byte
//
// The tinymoe model (16 experts, top-4) with lookahead 3 takes 155 bytes per token and
// layer. The footer is written by close(): a file whose writer did not close it (a crash)
// is refused as truncated, like any file cut short.
//
// Threads: a trace_writer or trace_reader is used by one thread at a time (in moed, the
// engine thread writes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "scheduler/trace_types.h"
#include "storage/io_util.h"

namespace moed::scheduler {

inline constexpr std::uint32_t trace_version = 1;
// Limits on what a header may claim; a file beyond them is refused as corrupt before
// anything is allocated for it. The writer refuses the same.
inline constexpr std::uint32_t trace_max_layers = 1024;
inline constexpr std::uint32_t trace_max_experts = 4096;
inline constexpr std::uint32_t trace_max_experts_used = 64;
inline constexpr std::uint32_t trace_max_lookahead_depth = 8;
inline constexpr std::size_t trace_max_name_bytes = 256;
inline constexpr std::uint32_t trace_max_tags = 1u << 20;
inline constexpr std::size_t trace_max_tag_bytes = 256;
inline constexpr std::int64_t trace_max_pos = 0xffffffffll;

// Bytes of one record for these sizes.
std::size_t trace_record_bytes(std::uint32_t n_expert, std::uint32_t n_expert_used,
                               std::uint32_t lookahead_depth) noexcept;

// Checks the sizes a trace_info claims against the limits above (and expert_bytes' length).
// Errors (invalid_argument) name the field.
result<void> validate_trace_info(const trace_info& info);

// Refuses a trace made for another model: n_layer, n_expert and n_expert_used must equal
// `model`'s, and model_id too when both are set. Errors (invalid_argument) name the field
// and both values.
result<void> check_trace_matches(const trace_info& trace, const trace_info& model);

// Streams records to a file through a fixed buffer (no memory grows with the trace, except
// one string per distinct tag name). close() writes the tag table and the footer; the
// destructor closes a writer that is still open and logs a failure. After an I/O error
// every later call returns that error.
class trace_writer {
public:
    static constexpr std::size_t buffer_bytes = 1 << 20;

    // Creates (or truncates) `path` and writes the header. Errors: a bad info
    // (invalid_argument, naming the field), the file cannot be created (io, naming it).
    static result<trace_writer> create(const std::string& path, const trace_info& info);

    trace_writer(trace_writer&& other) noexcept;
    trace_writer& operator=(trace_writer&& other) noexcept;
    trace_writer(const trace_writer&) = delete;
    trace_writer& operator=(const trace_writer&) = delete;
    ~trace_writer();

    const trace_info& info() const noexcept { return info_; }
    const std::string& path() const noexcept { return path_; }
    bool is_open() const noexcept { return fd_.valid(); }
    std::uint64_t records_written() const noexcept { return records_; }

    // The tag for `name`: the same number for the same name, new names numbered 0, 1, ...
    // in order. Errors: name longer than trace_max_tag_bytes, more than trace_max_tags.
    result<std::uint32_t> intern_tag(std::string_view name);
    const std::vector<std::string>& tag_names() const noexcept { return tag_names_; }

    // Appends one record. Errors (invalid_argument, naming the field): probs, chosen or
    // lookahead of the wrong size, layer or an expert out of range, pos outside
    // 0..trace_max_pos. I/O errors (io) when the buffer is flushed. A record may carry a tag
    // that was never interned; if the table is not empty at close, it is padded with empty
    // names up to the largest tag written (so every tag has a name).
    result<void> write(const trace_record& record);
    // Writes the buffer out (the file then holds every record so far, but no footer yet).
    result<void> flush();
    // Flushes, writes the tag table and the footer, closes the file. Further writes fail.
    result<void> close();

private:
    trace_writer() = default;
    result<void> put(const void* data, std::size_t n);
    result<void> write_all(const std::byte* data, std::size_t n);
    result<void> closed_error() const;

    storage::unique_fd fd_;
    std::string path_;
    trace_info info_;
    std::size_t record_bytes_ = 0;
    std::vector<std::byte> buffer_;
    std::size_t used_ = 0;
    std::uint64_t file_bytes_ = 0;  // bytes written to the file so far (buffer not included)
    std::uint64_t records_ = 0;
    std::uint32_t max_tag_ = 0;     // largest tag written + 1
    std::vector<std::string> tag_names_;
    std::unordered_map<std::string, std::uint32_t> tag_index_;
    std::string failed_;            // the first I/O error, repeated by later calls
};

// Reads a trace file, validating everything: magic, version, header sizes against the
// limits and each other, the footer (a file cut short anywhere, or never closed, is an
// error naming the file and the byte offset where the end marker was expected), the tag
// table, and every record as it is read (flags, layer, experts, probabilities). Errors are
// bad_file (or io) and name the file, the field or record index, and its byte offset.
class trace_reader {
public:
    static constexpr std::size_t buffer_bytes = 1 << 20;

    static result<trace_reader> open(const std::string& path);

    const trace_info& info() const noexcept { return info_; }
    // Tag i -> its name (e.g. "c/17"); empty when the file has no tag table.
    const std::vector<std::string>& tag_names() const noexcept { return tag_names_; }
    std::uint64_t record_count() const noexcept { return record_count_; }
    const std::string& path() const noexcept { return path_; }

    // Reads the next record into `out` (reusing its vectors' storage): true, or false at the
    // end. After an error the reader stays at the failing record.
    result<bool> next(trace_record& out);

private:
    trace_reader() = default;
    result<void> read_at(std::uint64_t offset, void* data, std::size_t n, std::string_view what) const;

    storage::unique_fd fd_;
    std::string path_;
    std::uint64_t file_size_ = 0;
    trace_info info_;
    std::vector<std::string> tag_names_;
    std::size_t record_bytes_ = 0;
    std::uint64_t records_offset_ = 0;
    std::uint64_t record_count_ = 0;
    std::uint64_t next_record_ = 0;
    std::vector<std::byte> buffer_;
    std::uint64_t buffer_first_ = 0;  // index of the first record in buffer_
    std::uint64_t buffer_count_ = 0;  // records in buffer_
};

// The whole trace in memory (records in file order). `tag_names`, when given, receives the
// tag table.
result<std::vector<trace_record>> read_trace(const std::string& path, trace_info& info,
                                             std::vector<std::string>* tag_names = nullptr);

}  // namespace moed::scheduler
