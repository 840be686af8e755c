#include "scheduler/trace.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "common/log.h"
#include "kernels/cpu/fp16.h"

namespace moed::scheduler {

namespace {

constexpr std::string_view k_component = "trace";
constexpr char k_magic[8] = {'M', 'O', 'E', 'T', 'R', 'A', 'C', 'E'};
constexpr char k_tags_magic[8] = {'M', 'O', 'E', 'T', 'T', 'A', 'G', 'S'};
constexpr char k_end_magic[8] = {'M', 'O', 'E', 'T', 'E', 'N', 'D', '\0'};
// magic, version, header_bytes, n_layer, n_expert, n_expert_used, lookahead_depth, record_bytes
constexpr std::size_t k_fixed_header_bytes = 36;
constexpr std::size_t k_footer_bytes = 24;
// The largest header the limits allow: two names, the expert_bytes count and its entries.
constexpr std::size_t k_max_header_bytes =
    k_fixed_header_bytes + 2 * (2 + trace_max_name_bytes) + 4 + 8 * std::size_t{trace_max_layers};
// seq, tag, pos, token, layer, flags
constexpr std::size_t k_record_fixed_bytes = 8 + 4 + 4 + 4 + 2 + 1;
constexpr std::uint8_t k_flag_prefill = 1;

void put_le(std::byte* p, std::uint64_t v, int n) noexcept {
    for (int i = 0; i < n; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}

std::uint64_t get_le(const std::byte* p, int n) noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(std::to_integer<unsigned>(p[i])) << (8 * i);
    return v;
}

// Appends little-endian fields to a byte vector (the header and the tag table).
struct byte_sink {
    std::vector<std::byte> bytes;
    void raw(const void* data, std::size_t n) {
        const auto* p = static_cast<const std::byte*>(data);
        bytes.insert(bytes.end(), p, p + n);
    }
    void le(std::uint64_t v, int n) {
        const std::size_t at = bytes.size();
        bytes.resize(at + static_cast<std::size_t>(n));
        put_le(bytes.data() + at, v, n);
    }
    void str(std::string_view s) {
        le(s.size(), 2);
        raw(s.data(), s.size());
    }
};

// Reads fields from a byte range of the file held in memory, checking each against the
// range's end; errors name the file, the field and its absolute byte offset.
class byte_cursor {
public:
    byte_cursor(const std::string& path, const std::byte* data, std::size_t size, std::uint64_t base,
                std::string_view region)
        : path_(path), data_(data), size_(size), base_(base), region_(region) {}

    result<std::uint64_t> le(int n, std::string_view field) {
        MOED_TRY(need(static_cast<std::size_t>(n), field));
        const std::uint64_t v = get_le(data_ + at_, n);
        at_ += static_cast<std::size_t>(n);
        return v;
    }
    result<std::string> str(std::size_t max_bytes, std::string_view field) {
        const std::uint64_t where = offset();
        auto len = le(2, field);
        if (!len) return unexpected(std::move(len).error());
        if (*len > max_bytes) {
            return make_error(errc::bad_file, "trace {}: {} at byte {} is {} bytes; the limit is {}", path_, field,
                              where, *len, max_bytes);
        }
        MOED_TRY(need(static_cast<std::size_t>(*len), field));
        std::string s(reinterpret_cast<const char*>(data_ + at_), static_cast<std::size_t>(*len));
        at_ += static_cast<std::size_t>(*len);
        return s;
    }
    std::uint64_t offset() const noexcept { return base_ + at_; }
    std::size_t remaining() const noexcept { return size_ - at_; }

private:
    result<void> need(std::size_t n, std::string_view field) const {
        if (size_ - at_ < n) {
            return make_error(errc::bad_file, "trace {}: {} at byte {} needs {} bytes, but the {} ends at byte {}",
                              path_, field, offset(), n, region_, base_ + size_);
        }
        return {};
    }
    const std::string& path_;
    const std::byte* data_;
    std::size_t size_;
    std::uint64_t base_;
    std::string_view region_;
    std::size_t at_ = 0;
};

int expert_index_bytes(std::uint32_t n_expert) noexcept { return n_expert <= 256 ? 1 : 2; }

bool is_probability(float p) noexcept { return std::isfinite(p) && p >= 0.0f && p <= 1.0f; }

}  // namespace

std::size_t trace_record_bytes(std::uint32_t n_expert, std::uint32_t n_expert_used,
                               std::uint32_t lookahead_depth) noexcept {
    return k_record_fixed_bytes + static_cast<std::size_t>(n_expert_used) * expert_index_bytes(n_expert) +
           2 * static_cast<std::size_t>(n_expert) * (1 + lookahead_depth);
}

result<void> validate_trace_info(const trace_info& info) {
    if (info.n_layer < 1 || info.n_layer > trace_max_layers) {
        return make_error(errc::invalid_argument, "trace n_layer {} is out of range (1..{})", info.n_layer,
                          trace_max_layers);
    }
    if (info.n_expert < 1 || info.n_expert > trace_max_experts) {
        return make_error(errc::invalid_argument, "trace n_expert {} is out of range (1..{})", info.n_expert,
                          trace_max_experts);
    }
    const std::uint32_t used_max = std::min(info.n_expert, trace_max_experts_used);
    if (info.n_expert_used < 1 || info.n_expert_used > used_max) {
        return make_error(errc::invalid_argument, "trace n_expert_used {} is out of range (1..{})",
                          info.n_expert_used, used_max);
    }
    if (info.lookahead_depth > trace_max_lookahead_depth) {
        return make_error(errc::invalid_argument, "trace lookahead_depth {} is out of range (0..{})",
                          info.lookahead_depth, trace_max_lookahead_depth);
    }
    if (info.model_name.size() > trace_max_name_bytes) {
        return make_error(errc::invalid_argument, "trace model_name is {} bytes; the limit is {}",
                          info.model_name.size(), trace_max_name_bytes);
    }
    if (info.model_id.size() > trace_max_name_bytes) {
        return make_error(errc::invalid_argument, "trace model_id is {} bytes; the limit is {}", info.model_id.size(),
                          trace_max_name_bytes);
    }
    if (!info.expert_bytes.empty() && info.expert_bytes.size() != info.n_layer) {
        return make_error(errc::invalid_argument, "trace expert_bytes has {} entries; it needs 0 or n_layer ({})",
                          info.expert_bytes.size(), info.n_layer);
    }
    return {};
}

result<void> check_trace_matches(const trace_info& trace, const trace_info& model) {
    auto mismatch = [](std::string_view field, std::uint32_t t, std::uint32_t m) {
        return make_error(errc::invalid_argument, "the trace was recorded with {} {}, but this model has {}", field, t,
                          m);
    };
    if (trace.n_layer != model.n_layer) return mismatch("n_layer", trace.n_layer, model.n_layer);
    if (trace.n_expert != model.n_expert) return mismatch("n_expert", trace.n_expert, model.n_expert);
    if (trace.n_expert_used != model.n_expert_used) {
        return mismatch("n_expert_used", trace.n_expert_used, model.n_expert_used);
    }
    if (!trace.model_id.empty() && !model.model_id.empty() && trace.model_id != model.model_id) {
        return make_error(errc::invalid_argument, "the trace was recorded on model_id {}, but this model is {}",
                          trace.model_id, model.model_id);
    }
    return {};
}

// --- writer ---------------------------------------------------------------------------------

result<trace_writer> trace_writer::create(const std::string& path, const trace_info& info) {
    MOED_TRY(validate_trace_info(info));
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return make_error(errc::io, "cannot create trace file {}: {}", path, storage::errno_text(errno));
    }
    trace_writer w;
    w.fd_ = storage::unique_fd(fd);
    w.path_ = path;
    w.info_ = info;
    w.record_bytes_ = trace_record_bytes(info.n_expert, info.n_expert_used, info.lookahead_depth);

    byte_sink h;
    h.raw(k_magic, sizeof k_magic);
    h.le(trace_version, 4);
    h.le(0, 4);  // header_bytes, filled in below
    h.le(info.n_layer, 4);
    h.le(info.n_expert, 4);
    h.le(info.n_expert_used, 4);
    h.le(info.lookahead_depth, 4);
    h.le(w.record_bytes_, 4);
    h.str(info.model_name);
    h.str(info.model_id);
    h.le(info.expert_bytes.size(), 4);
    for (std::uint64_t b : info.expert_bytes) h.le(b, 8);
    put_le(h.bytes.data() + 12, h.bytes.size(), 4);

    w.buffer_.resize(std::max(buffer_bytes, h.bytes.size() + w.record_bytes_));
    MOED_TRY(w.put(h.bytes.data(), h.bytes.size()));
    return w;
}

trace_writer::trace_writer(trace_writer&& other) noexcept
    : fd_(std::move(other.fd_)),
      path_(std::move(other.path_)),
      info_(std::move(other.info_)),
      record_bytes_(other.record_bytes_),
      buffer_(std::move(other.buffer_)),
      used_(std::exchange(other.used_, 0)),
      file_bytes_(other.file_bytes_),
      records_(other.records_),
      max_tag_(other.max_tag_),
      tag_names_(std::move(other.tag_names_)),
      tag_index_(std::move(other.tag_index_)),
      failed_(std::move(other.failed_)) {}

trace_writer& trace_writer::operator=(trace_writer&& other) noexcept {
    if (this == &other) return *this;
    if (is_open()) {
        if (auto r = close(); !r) MOED_LOG_ERROR(k_component, "{}", r.error().message);
    }
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    info_ = std::move(other.info_);
    record_bytes_ = other.record_bytes_;
    buffer_ = std::move(other.buffer_);
    used_ = std::exchange(other.used_, 0);
    file_bytes_ = other.file_bytes_;
    records_ = other.records_;
    max_tag_ = other.max_tag_;
    tag_names_ = std::move(other.tag_names_);
    tag_index_ = std::move(other.tag_index_);
    failed_ = std::move(other.failed_);
    return *this;
}

trace_writer::~trace_writer() {
    if (!is_open()) return;
    try {
        if (auto r = close(); !r) MOED_LOG_ERROR(k_component, "{}", r.error().message);
    } catch (...) {
        MOED_LOG_ERROR(k_component, "closing trace {} failed", path_);
    }
}

result<void> trace_writer::closed_error() const {
    if (!failed_.empty()) return make_error(errc::io, "{}", failed_);
    return make_error(errc::invalid_argument, "trace {} is closed", path_);
}

result<std::uint32_t> trace_writer::intern_tag(std::string_view name) {
    if (name.size() > trace_max_tag_bytes) {
        return make_error(errc::invalid_argument, "trace tag of {} bytes exceeds the limit of {}", name.size(),
                          trace_max_tag_bytes);
    }
    const std::string key(name);
    if (auto it = tag_index_.find(key); it != tag_index_.end()) return it->second;
    if (tag_names_.size() >= trace_max_tags) {
        return make_error(errc::invalid_argument, "trace {} already has the maximum of {} tags", path_,
                          trace_max_tags);
    }
    const auto tag = static_cast<std::uint32_t>(tag_names_.size());
    tag_names_.push_back(key);
    tag_index_.emplace(key, tag);
    return tag;
}

result<void> trace_writer::write_all(const std::byte* data, std::size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd_.get(), data, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            failed_ = fmt::format("writing trace {} at byte {} failed: {}", path_, file_bytes_,
                                  storage::errno_text(errno));
            return make_error(errc::io, "{}", failed_);
        }
        data += w;
        n -= static_cast<std::size_t>(w);
        file_bytes_ += static_cast<std::uint64_t>(w);
    }
    return {};
}

result<void> trace_writer::put(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::byte*>(data);
    while (n > 0) {
        if (used_ == buffer_.size()) MOED_TRY(flush());
        const std::size_t take = std::min(n, buffer_.size() - used_);
        std::memcpy(buffer_.data() + used_, p, take);
        used_ += take;
        p += take;
        n -= take;
    }
    return {};
}

result<void> trace_writer::flush() {
    if (!is_open() || !failed_.empty()) return closed_error();
    MOED_TRY(write_all(buffer_.data(), used_));
    used_ = 0;
    return {};
}

result<void> trace_writer::write(const trace_record& r) {
    if (!is_open() || !failed_.empty()) return closed_error();
    const std::uint32_t n_exp = info_.n_expert;
    if (r.probs.size() != n_exp) {
        return make_error(errc::invalid_argument, "trace record probs has {} values; the trace has n_expert {}",
                          r.probs.size(), n_exp);
    }
    if (r.chosen.size() != info_.n_expert_used) {
        return make_error(errc::invalid_argument, "trace record chosen has {} experts; the trace has n_expert_used {}",
                          r.chosen.size(), info_.n_expert_used);
    }
    if (r.lookahead.size() != static_cast<std::size_t>(info_.lookahead_depth) * n_exp) {
        return make_error(errc::invalid_argument,
                          "trace record lookahead has {} values; the trace needs lookahead_depth {} x n_expert {}",
                          r.lookahead.size(), info_.lookahead_depth, n_exp);
    }
    if (r.layer >= info_.n_layer) {
        return make_error(errc::invalid_argument, "trace record layer {} is out of range (0..{})", r.layer,
                          info_.n_layer - 1);
    }
    if (r.pos < 0 || r.pos > trace_max_pos) {
        return make_error(errc::invalid_argument, "trace record pos {} is out of range (0..{})", r.pos,
                          trace_max_pos);
    }
    for (std::size_t i = 0; i < r.chosen.size(); ++i) {
        const std::int32_t e = r.chosen[i];
        if (e < 0 || static_cast<std::uint32_t>(e) >= n_exp) {
            return make_error(errc::invalid_argument, "trace record chosen[{}] = {} is out of range (0..{})", i, e,
                              n_exp - 1);
        }
        for (std::size_t j = 0; j < i; ++j) {
            if (r.chosen[j] == e) {
                return make_error(errc::invalid_argument, "trace record chooses expert {} twice", e);
            }
        }
    }
    for (std::size_t i = 0; i < r.probs.size(); ++i) {
        if (!is_probability(r.probs[i])) {
            return make_error(errc::invalid_argument, "trace record probs[{}] = {} is not a probability", i,
                              r.probs[i]);
        }
    }
    for (std::size_t i = 0; i < r.lookahead.size(); ++i) {
        if (!is_probability(r.lookahead[i])) {
            return make_error(errc::invalid_argument, "trace record lookahead[{}] = {} is not a probability", i,
                              r.lookahead[i]);
        }
    }

    if (buffer_.size() - used_ < record_bytes_) MOED_TRY(flush());
    std::byte* p = buffer_.data() + used_;
    put_le(p, r.seq, 8);
    put_le(p + 8, r.tag, 4);
    put_le(p + 12, static_cast<std::uint64_t>(r.pos), 4);
    put_le(p + 16, static_cast<std::uint32_t>(r.token), 4);
    put_le(p + 20, r.layer, 2);
    put_le(p + 22, r.prefill ? k_flag_prefill : 0, 1);
    p += k_record_fixed_bytes;
    const int eb = expert_index_bytes(n_exp);
    for (std::int32_t e : r.chosen) {
        put_le(p, static_cast<std::uint32_t>(e), eb);
        p += eb;
    }
    for (float v : r.probs) {
        put_le(p, kernels::fp32_to_fp16(v), 2);
        p += 2;
    }
    for (float v : r.lookahead) {
        put_le(p, kernels::fp32_to_fp16(v), 2);
        p += 2;
    }
    MOED_ASSERT(static_cast<std::size_t>(p - (buffer_.data() + used_)) == record_bytes_);
    used_ += record_bytes_;
    ++records_;
    max_tag_ = std::max(max_tag_, r.tag + 1);
    return {};
}

result<void> trace_writer::close() {
    if (!is_open()) {
        if (failed_.empty()) return {};
        return closed_error();
    }
    if (!failed_.empty()) {
        fd_.reset();
        return closed_error();
    }
    // Every tag gets a name once there is a table (the reader checks tags against it).
    if (!tag_names_.empty() && tag_names_.size() < max_tag_) tag_names_.resize(max_tag_);
    const std::uint64_t tag_table_offset = file_bytes_ + used_;
    byte_sink t;
    t.raw(k_tags_magic, sizeof k_tags_magic);
    t.le(tag_names_.size(), 4);
    for (const std::string& name : tag_names_) t.str(name);
    t.le(records_, 8);
    t.le(tag_table_offset, 8);
    t.raw(k_end_magic, sizeof k_end_magic);
    auto done = put(t.bytes.data(), t.bytes.size());
    if (done) done = flush();
    fd_.reset();
    return done;
}

// --- reader ---------------------------------------------------------------------------------

result<void> trace_reader::read_at(std::uint64_t offset, void* data, std::size_t n, std::string_view what) const {
    auto* p = static_cast<std::byte*>(data);
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = ::pread(fd_.get(), p + done, n - done, static_cast<off_t>(offset + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return make_error(errc::io, "trace {}: reading {} at byte {} failed: {}", path_, what, offset + done,
                              storage::errno_text(errno));
        }
        if (r == 0) {
            return make_error(errc::bad_file, "trace {}: the file ends at byte {} while reading {}", path_,
                              offset + done, what);
        }
        done += static_cast<std::size_t>(r);
    }
    return {};
}

result<trace_reader> trace_reader::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(errc::io, "cannot open trace {}: {}", path, storage::errno_text(errno));
    trace_reader r;
    r.fd_ = storage::unique_fd(fd);
    r.path_ = path;
    struct stat st {};
    if (::fstat(fd, &st) != 0) return make_error(errc::io, "trace {}: fstat failed: {}", path, storage::errno_text(errno));
    r.file_size_ = static_cast<std::uint64_t>(st.st_size);

    // Fixed header fields.
    if (r.file_size_ < k_fixed_header_bytes) {
        return make_error(errc::bad_file, "trace {}: truncated: the file ends at byte {}, inside the header ({} bytes)",
                          path, r.file_size_, k_fixed_header_bytes);
    }
    std::byte fixed[k_fixed_header_bytes];
    MOED_TRY(r.read_at(0, fixed, sizeof fixed, "the header"));
    if (std::memcmp(fixed, k_magic, sizeof k_magic) != 0) {
        return make_error(errc::bad_file, "trace {}: not a moed routing trace (no MOETRACE magic at byte 0)", path);
    }
    const auto version = static_cast<std::uint32_t>(get_le(fixed + 8, 4));
    if (version != trace_version) {
        return make_error(errc::unsupported, "trace {}: version {} at byte 8 is not supported (this build reads {})",
                          path, version, trace_version);
    }
    const std::uint64_t header_bytes = get_le(fixed + 12, 4);
    if (header_bytes < k_fixed_header_bytes + 2 + 2 + 4 || header_bytes > k_max_header_bytes) {
        return make_error(errc::bad_file, "trace {}: header_bytes {} at byte 12 is out of range ({}..{})", path,
                          header_bytes, k_fixed_header_bytes + 8, k_max_header_bytes);
    }
    if (header_bytes > r.file_size_) {
        return make_error(errc::bad_file, "trace {}: truncated: header_bytes {} at byte 12 runs past the end of the file at byte {}",
                          path, header_bytes, r.file_size_);
    }
    std::vector<std::byte> header(static_cast<std::size_t>(header_bytes));
    MOED_TRY(r.read_at(0, header.data(), header.size(), "the header"));
    byte_cursor c(path, header.data(), header.size(), 0, "header");
    (void)c.le(8, "magic");
    (void)c.le(4, "version");
    (void)c.le(4, "header_bytes");
    struct count_field {
        const char* name;
        std::uint32_t min, max;
        std::uint32_t* out;
    };
    trace_info& info = r.info_;
    const count_field counts[] = {
        {"n_layer", 1, trace_max_layers, &info.n_layer},
        {"n_expert", 1, trace_max_experts, &info.n_expert},
        {"n_expert_used", 1, trace_max_experts_used, &info.n_expert_used},
        {"lookahead_depth", 0, trace_max_lookahead_depth, &info.lookahead_depth},
    };
    for (const count_field& f : counts) {
        const std::uint64_t at = c.offset();
        auto v = c.le(4, f.name);
        if (!v) return unexpected(std::move(v).error());
        std::uint32_t max = f.max;
        if (f.out == &info.n_expert_used) max = std::min(max, info.n_expert);
        if (*v < f.min || *v > max) {
            return make_error(errc::bad_file, "trace {}: {} {} at byte {} is out of range ({}..{})", path, f.name, *v,
                              at, f.min, max);
        }
        *f.out = static_cast<std::uint32_t>(*v);
    }
    {
        const std::uint64_t at = c.offset();
        auto rb = c.le(4, "record_bytes");
        if (!rb) return unexpected(std::move(rb).error());
        r.record_bytes_ = trace_record_bytes(info.n_expert, info.n_expert_used, info.lookahead_depth);
        if (*rb != r.record_bytes_) {
            return make_error(errc::bad_file,
                              "trace {}: record_bytes {} at byte {} does not match the sizes in the header ({} bytes "
                              "for n_expert {}, n_expert_used {}, lookahead_depth {})",
                              path, *rb, at, r.record_bytes_, info.n_expert, info.n_expert_used, info.lookahead_depth);
        }
    }
    {
        auto name = c.str(trace_max_name_bytes, "model_name");
        if (!name) return unexpected(std::move(name).error());
        info.model_name = std::move(*name);
        auto id = c.str(trace_max_name_bytes, "model_id");
        if (!id) return unexpected(std::move(id).error());
        info.model_id = std::move(*id);
    }
    {
        const std::uint64_t at = c.offset();
        auto n = c.le(4, "n_expert_bytes");
        if (!n) return unexpected(std::move(n).error());
        if (*n != 0 && *n != info.n_layer) {
            return make_error(errc::bad_file, "trace {}: n_expert_bytes {} at byte {} must be 0 or n_layer ({})", path,
                              *n, at, info.n_layer);
        }
        info.expert_bytes.resize(static_cast<std::size_t>(*n));
        for (std::uint64_t& b : info.expert_bytes) {
            auto v = c.le(8, "expert_bytes");
            if (!v) return unexpected(std::move(v).error());
            b = *v;
        }
    }
    if (c.remaining() != 0) {
        return make_error(errc::bad_file, "trace {}: header_bytes {} at byte 12 leaves {} unparsed bytes at byte {}",
                          path, header_bytes, c.remaining(), c.offset());
    }

    // Footer: where the records end and the tag table begins.
    const std::uint64_t end_marker_at = r.file_size_ >= 8 ? r.file_size_ - 8 : 0;
    if (r.file_size_ < header_bytes + k_footer_bytes) {
        return make_error(errc::bad_file,
                          "trace {}: truncated: the file ends at byte {} with no room for the footer after the header "
                          "(the writer did not close it, or it was cut short)",
                          path, r.file_size_);
    }
    std::byte footer[k_footer_bytes];
    MOED_TRY(r.read_at(r.file_size_ - k_footer_bytes, footer, sizeof footer, "the footer"));
    if (std::memcmp(footer + 16, k_end_magic, sizeof k_end_magic) != 0) {
        return make_error(errc::bad_file,
                          "trace {}: truncated: no end marker at byte {} (the file of {} bytes was cut short or its "
                          "writer did not close it)",
                          path, end_marker_at, r.file_size_);
    }
    const std::uint64_t footer_at = r.file_size_ - k_footer_bytes;
    r.record_count_ = get_le(footer, 8);
    const std::uint64_t tags_at = get_le(footer + 8, 8);
    r.records_offset_ = header_bytes;
    const std::uint64_t room = footer_at - header_bytes;
    if (r.record_count_ > room / r.record_bytes_) {
        return make_error(errc::bad_file, "trace {}: record_count {} at byte {} does not fit in the file ({} bytes of records at most)",
                          path, r.record_count_, footer_at, room);
    }
    const std::uint64_t records_end = header_bytes + r.record_count_ * r.record_bytes_;
    if (tags_at != records_end) {
        return make_error(errc::bad_file,
                          "trace {}: tag_table_offset {} at byte {} is not where {} records of {} bytes end (byte {})",
                          path, tags_at, footer_at + 8, r.record_count_, r.record_bytes_, records_end);
    }

    // Tag table, between the records and the footer.
    std::vector<std::byte> table(static_cast<std::size_t>(footer_at - tags_at));
    MOED_TRY(r.read_at(tags_at, table.data(), table.size(), "the tag table"));
    byte_cursor tc(path, table.data(), table.size(), tags_at, "tag table");
    if (table.size() < sizeof k_tags_magic || std::memcmp(table.data(), k_tags_magic, sizeof k_tags_magic) != 0) {
        return make_error(errc::bad_file, "trace {}: no MOETTAGS magic at byte {} (the tag table)", path, tags_at);
    }
    (void)tc.le(8, "tag table magic");
    {
        const std::uint64_t at = tc.offset();
        auto n = tc.le(4, "n_tags");
        if (!n) return unexpected(std::move(n).error());
        // Each name takes at least its two length bytes: a count the table cannot hold is
        // refused before anything is allocated for it.
        if (*n > trace_max_tags || *n > tc.remaining() / 2) {
            return make_error(errc::bad_file, "trace {}: n_tags {} at byte {} is out of range (0..{}, {} bytes left)",
                              path, *n, at, trace_max_tags, tc.remaining());
        }
        r.tag_names_.reserve(static_cast<std::size_t>(*n));
        for (std::uint64_t i = 0; i < *n; ++i) {
            auto s = tc.str(trace_max_tag_bytes, "tag name");
            if (!s) return unexpected(std::move(s).error());
            r.tag_names_.push_back(std::move(*s));
        }
    }
    if (tc.remaining() != 0) {
        return make_error(errc::bad_file, "trace {}: {} bytes after the tag table at byte {}, before the footer", path,
                          tc.remaining(), tc.offset());
    }

    const std::uint64_t per_buffer = std::max<std::uint64_t>(1, buffer_bytes / r.record_bytes_);
    r.buffer_.resize(static_cast<std::size_t>(std::min(per_buffer, std::max<std::uint64_t>(1, r.record_count_)) *
                                              r.record_bytes_));
    return r;
}

result<bool> trace_reader::next(trace_record& out) {
    if (next_record_ >= record_count_) return false;
    if (next_record_ < buffer_first_ || next_record_ >= buffer_first_ + buffer_count_) {
        const std::uint64_t fits = buffer_.size() / record_bytes_;
        const std::uint64_t count = std::min(fits, record_count_ - next_record_);
        buffer_count_ = 0;
        MOED_TRY(read_at(records_offset_ + next_record_ * record_bytes_, buffer_.data(),
                         static_cast<std::size_t>(count * record_bytes_), "records"));
        buffer_first_ = next_record_;
        buffer_count_ = count;
    }
    const std::uint64_t index = next_record_;
    const std::uint64_t at = records_offset_ + index * record_bytes_;
    const std::byte* p = buffer_.data() + (index - buffer_first_) * record_bytes_;
    auto bad = [&](std::string_view what) {
        return make_error(errc::bad_file, "trace {}: record {} at byte {}: {}", path_, index, at, what);
    };

    out.seq = get_le(p, 8);
    out.tag = static_cast<std::uint32_t>(get_le(p + 8, 4));
    out.pos = static_cast<std::int64_t>(get_le(p + 12, 4));
    out.token = static_cast<std::int32_t>(static_cast<std::uint32_t>(get_le(p + 16, 4)));
    out.layer = static_cast<std::uint32_t>(get_le(p + 20, 2));
    const auto flags = static_cast<std::uint8_t>(get_le(p + 22, 1));
    out.prefill = (flags & k_flag_prefill) != 0;
    if ((flags & ~k_flag_prefill) != 0) return bad(fmt::format("flags 0x{:02x} has unknown bits", flags));
    if (out.layer >= info_.n_layer) return bad(fmt::format("layer {} is out of range (0..{})", out.layer, info_.n_layer - 1));
    if (!tag_names_.empty() && out.tag >= tag_names_.size()) {
        return bad(fmt::format("tag {} has no name (the tag table has {})", out.tag, tag_names_.size()));
    }
    p += k_record_fixed_bytes;
    const int eb = expert_index_bytes(info_.n_expert);
    out.chosen.resize(info_.n_expert_used);
    for (std::size_t i = 0; i < out.chosen.size(); ++i) {
        const auto e = static_cast<std::uint32_t>(get_le(p, eb));
        p += eb;
        if (e >= info_.n_expert) return bad(fmt::format("chosen[{}] = {} is out of range (0..{})", i, e, info_.n_expert - 1));
        for (std::size_t j = 0; j < i; ++j) {
            if (out.chosen[j] == static_cast<std::int32_t>(e)) return bad(fmt::format("expert {} is chosen twice", e));
        }
        out.chosen[i] = static_cast<std::int32_t>(e);
    }
    auto read_probs = [&](std::vector<float>& v, std::size_t n, std::string_view field) -> result<void> {
        v.resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            v[i] = kernels::fp16_to_fp32(static_cast<std::uint16_t>(get_le(p, 2)));
            p += 2;
            if (!is_probability(v[i])) return bad(fmt::format("{}[{}] = {} is not a probability", field, i, v[i]));
        }
        return {};
    };
    MOED_TRY(read_probs(out.probs, info_.n_expert, "probs"));
    MOED_TRY(read_probs(out.lookahead, static_cast<std::size_t>(info_.lookahead_depth) * info_.n_expert, "lookahead"));
    ++next_record_;
    return true;
}

result<std::vector<trace_record>> read_trace(const std::string& path, trace_info& info,
                                             std::vector<std::string>* tag_names) {
    auto reader = trace_reader::open(path);
    if (!reader) return unexpected(std::move(reader).error());
    std::vector<trace_record> records;
    records.reserve(static_cast<std::size_t>(reader->record_count()));
    trace_record r;
    for (;;) {
        auto more = reader->next(r);
        if (!more) return unexpected(std::move(more).error());
        if (!*more) break;
        records.push_back(r);
    }
    info = reader->info();
    if (tag_names) *tag_names = reader->tag_names();
    return records;
}

}  // namespace moed::scheduler
