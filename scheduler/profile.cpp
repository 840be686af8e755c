#include "scheduler/profile.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>

#include <fmt/format.h>

#include "common/log.h"

namespace moed::scheduler {

namespace {

// Sums of a layer's floats are compared with this relative slack (f32 rounding of each
// fraction over up to 65535 experts).
constexpr double k_sum_tolerance = 1e-3;

// Between the target's file name and the writer's pid in a temporary file's name.
constexpr std::string_view temp_infix = ".tmp.";

const char* file_kind(mode_t mode) noexcept {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a plain file";
}

std::uint64_t fnv1a(std::span<const std::byte> bytes) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::byte b : bytes) {
        h ^= static_cast<std::uint8_t>(b);
        h *= 0x100000001b3ull;
    }
    return h;
}

class writer {
public:
    void u32(std::uint32_t v) { le(v, 4); }
    void u64(std::uint64_t v) { le(v, 8); }
    void i64(std::int64_t v) { le(static_cast<std::uint64_t>(v), 8); }
    void f32(float v) { le(std::bit_cast<std::uint32_t>(v), 4); }
    void text(std::string_view s) {
        u32(static_cast<std::uint32_t>(s.size()));
        raw(s.data(), s.size());
    }
    void raw(const void* p, std::size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        out.insert(out.end(), b, b + n);
    }
    std::vector<std::byte> out;

private:
    void le(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
    }
};

// Reads fields in order; every read checks the bytes left and names the field on failure.
class reader {
public:
    reader(std::span<const std::byte> bytes, std::string_view file) : bytes_(bytes), file_(file) {}

    std::size_t left() const noexcept { return bytes_.size() - pos_; }
    std::size_t pos() const noexcept { return pos_; }

    result<std::uint64_t> le(std::string_view field, int n) {
        if (left() < static_cast<std::size_t>(n)) return truncated(field);
        std::uint64_t v = 0;
        for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(bytes_[pos_ + i])) << (8 * i);
        pos_ += static_cast<std::size_t>(n);
        return v;
    }
    result<std::uint32_t> u32(std::string_view field) {
        auto v = le(field, 4);
        if (!v) return unexpected(std::move(v).error());
        return static_cast<std::uint32_t>(*v);
    }
    result<std::uint64_t> u64(std::string_view field) { return le(field, 8); }
    result<float> f32(std::string_view field) {
        auto v = le(field, 4);
        if (!v) return unexpected(std::move(v).error());
        return std::bit_cast<float>(static_cast<std::uint32_t>(*v));
    }
    result<std::string> text(std::string_view field) {
        auto n = u32(field);
        if (!n) return unexpected(std::move(n).error());
        if (*n > max_profile_string_bytes) return bad(field, fmt::format("length {} exceeds the limit of {} bytes", *n, max_profile_string_bytes));
        if (left() < *n) return truncated(field);
        std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), *n);
        pos_ += *n;
        return s;
    }

    unexpected bad(std::string_view field, std::string_view what) const {
        return make_error(errc::bad_file, "profile file '{}': field '{}': {}", file_, field, what);
    }
    unexpected truncated(std::string_view field) const {
        return make_error(errc::bad_file, "profile file '{}': field '{}': the file ends at byte {} (truncated)", file_,
                          field, bytes_.size());
    }

private:
    std::span<const std::byte> bytes_;
    std::string_view file_;
    std::size_t pos_ = 0;
};

bool valid_utf8(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        const std::size_t n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : 4;
        if (n == 4 || (n > 0 && i + n >= s.size())) return false;
        for (std::size_t j = 1; j <= n; ++j) {
            if ((static_cast<unsigned char>(s[i + j]) >> 6) != 0x2) return false;
        }
        i += n + 1;
    }
    return true;
}

// Validates one [n_layer][n_expert] table: finite, in [0, 1], each layer's sum within
// [lo, hi] (times the tolerance).
result<void> check_table(const reader& r, std::string_view field, const std::vector<float>& v, const routing_shape& shape,
                         double lo, double hi) {
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (!std::isfinite(v[i]) || v[i] < 0.0f || v[i] > 1.0f) {
            return r.bad(field, fmt::format("value {} of layer {} expert {} is outside [0, 1]", v[i], i / shape.n_expert,
                                            i % shape.n_expert));
        }
    }
    for (std::uint32_t l = 0; l < shape.n_layer; ++l) {
        double sum = 0.0;
        for (std::uint32_t e = 0; e < shape.n_expert; ++e) sum += v[static_cast<std::size_t>(l) * shape.n_expert + e];
        const double slack = k_sum_tolerance * std::max(1.0, hi);
        if (sum < lo - slack || sum > hi + slack) {
            return r.bad(field, lo == hi ? fmt::format("layer {} sums to {:.6f}, not {}", l, sum, hi)
                                         : fmt::format("layer {} sums to {:.6f}, outside [{}, {}]", l, sum, lo, hi));
        }
    }
    return {};
}

}  // namespace

std::vector<std::uint32_t> profile::top_experts(std::uint32_t layer, std::uint32_t k) const {
    const std::span<const float> s = layer_score(layer);
    std::vector<std::uint32_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0u);
    k = std::min<std::uint32_t>(k, static_cast<std::uint32_t>(idx.size()));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](std::uint32_t a, std::uint32_t b) {
        return s[a] > s[b] || (s[a] == s[b] && a < b);
    });
    idx.resize(k);
    return idx;
}

result<void> check_profile_name(std::string_view name) {
    if (name.empty()) return make_error(errc::invalid_argument, "profile name: must not be empty");
    if (name.size() > max_profile_name_bytes)
        return make_error(errc::invalid_argument, "profile name: {} characters is more than the {} allowed",
                          name.size(), max_profile_name_bytes);
    for (char c : name) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                        c == '_' || c == '-';
        if (!ok) {
            // The byte in hex: the name may hold anything, including control characters.
            return make_error(errc::invalid_argument,
                              "profile name: only letters, digits, '.', '_' and '-' are allowed (found byte 0x{:02x})",
                              static_cast<unsigned char>(c));
        }
    }
    if (name.front() == '.') return make_error(errc::invalid_argument, "profile name '{}': must not start with '.'", name);
    return {};
}

profile make_profile(std::string name, std::string model_identity, std::string model_name, std::string source,
                     std::uint32_t n_prompts, std::int64_t created_unix, const routing_accumulator& stats) {
    MOED_ASSERT(stats.tokens() > 0);
    profile p;
    p.name = std::move(name);
    p.model_identity = std::move(model_identity);
    p.model_name = std::move(model_name);
    p.source = std::move(source);
    p.n_prompts = n_prompts;
    p.n_tokens = stats.tokens();
    p.created_unix = created_unix;
    p.shape = stats.shape();
    const double inv = 1.0 / static_cast<double>(stats.tokens());
    p.score.resize(stats.score_sums().size());
    p.selection.resize(stats.selection_counts().size());
    for (std::size_t i = 0; i < p.score.size(); ++i) {
        // Rounding may push a sum of probabilities a hair over 1.
        p.score[i] = static_cast<float>(std::min(1.0, stats.score_sums()[i] * inv));
        p.selection[i] = static_cast<float>(std::min(1.0, stats.selection_counts()[i] * inv));
    }
    p.ngram_order = stats.ngram_order();
    p.ngrams = stats.ngrams();
    if (p.ngrams.size() > max_profile_ngrams) {
        std::nth_element(p.ngrams.begin(), p.ngrams.begin() + max_profile_ngrams, p.ngrams.end(),
                         [](const ngram_count& a, const ngram_count& b) {
                             return a.count > b.count || (a.count == b.count && a.key < b.key);
                         });
        p.ngrams.resize(max_profile_ngrams);
        std::sort(p.ngrams.begin(), p.ngrams.end(), [](const ngram_count& a, const ngram_count& b) { return a.key < b.key; });
    }
    return p;
}

std::vector<std::byte> serialize_profile(const profile& p) {
    writer w;
    w.raw(profile_magic.data(), profile_magic.size());
    w.u32(profile_format_version);
    w.u32(p.shape.n_layer);
    w.u32(p.shape.n_expert);
    w.u32(p.shape.n_expert_used);
    w.u32(p.n_prompts);
    w.i64(p.n_tokens);
    w.i64(p.created_unix);
    w.text(p.name);
    w.text(p.model_identity);
    w.text(p.model_name);
    w.text(p.source);
    for (float v : p.score) w.f32(v);
    for (float v : p.selection) w.f32(v);
    w.u32(p.ngram_order);
    w.u64(p.ngrams.size());
    for (const ngram_count& g : p.ngrams) {
        w.u64(g.key);
        w.u32(g.count);
    }
    w.u64(fnv1a(w.out));
    return std::move(w.out);
}

result<profile> parse_profile(std::span<const std::byte> bytes, std::string_view file) {
    reader r(bytes, file);
    if (bytes.size() < profile_magic.size() || std::memcmp(bytes.data(), profile_magic.data(), profile_magic.size()) != 0)
        return r.bad("magic", "not a moed profile (the file does not start with \"MOEDPROF\")");
    MOED_TRY(r.le("magic", static_cast<int>(profile_magic.size())));
    auto version = r.u32("version");
    if (!version) return unexpected(std::move(version).error());
    if (*version != profile_format_version)
        return make_error(errc::unsupported, "profile file '{}': field 'version': version {} is not supported (this moed reads version {})",
                          file, *version, profile_format_version);
    // The checksum covers everything else; check it early so a random corruption is
    // reported as such rather than as whichever field it happened to hit.
    if (bytes.size() < 8 + profile_magic.size() + 4) return r.truncated("checksum");
    {
        reader tail(bytes.subspan(bytes.size() - 8), file);
        auto stored = tail.u64("checksum");
        if (!stored) return unexpected(std::move(stored).error());
        const std::uint64_t actual = fnv1a(bytes.first(bytes.size() - 8));
        if (*stored != actual)
            return r.bad("checksum", fmt::format("stored {:016x} but the contents hash to {:016x} (the file is corrupt)",
                                                 *stored, actual));
    }

    profile p;
    auto n_layer = r.u32("n_layer");
    if (!n_layer) return unexpected(std::move(n_layer).error());
    auto n_expert = r.u32("n_expert");
    if (!n_expert) return unexpected(std::move(n_expert).error());
    auto n_used = r.u32("n_expert_used");
    if (!n_used) return unexpected(std::move(n_used).error());
    if (*n_layer < 1 || *n_layer > max_routing_layers)
        return r.bad("n_layer", fmt::format("{} is outside [1, {}]", *n_layer, max_routing_layers));
    if (*n_expert < 1 || *n_expert > max_routing_experts)
        return r.bad("n_expert", fmt::format("{} is outside [1, {}]", *n_expert, max_routing_experts));
    if (*n_used < 1 || *n_used > *n_expert)
        return r.bad("n_expert_used", fmt::format("{} is outside [1, n_expert = {}]", *n_used, *n_expert));
    const std::uint64_t cells = static_cast<std::uint64_t>(*n_layer) * *n_expert;
    if (cells > max_profile_cells)
        return r.bad("n_expert", fmt::format("{} layers of {} experts is more than the {} cells allowed", *n_layer,
                                             *n_expert, max_profile_cells));
    p.shape = {*n_layer, *n_expert, *n_used};

    auto n_prompts = r.u32("n_prompts");
    if (!n_prompts) return unexpected(std::move(n_prompts).error());
    if (*n_prompts < 1) return r.bad("n_prompts", "must be at least 1");
    p.n_prompts = *n_prompts;
    auto n_tokens = r.u64("n_tokens");
    if (!n_tokens) return unexpected(std::move(n_tokens).error());
    const auto tokens = static_cast<std::int64_t>(*n_tokens);
    if (tokens < 1) return r.bad("n_tokens", fmt::format("{} is not a positive count", tokens));
    p.n_tokens = tokens;
    auto created = r.u64("created");
    if (!created) return unexpected(std::move(created).error());
    p.created_unix = static_cast<std::int64_t>(*created);

    struct text_field {
        const char* name;
        std::string* out;
    };
    for (const text_field& f : {text_field{"name", &p.name}, text_field{"model_identity", &p.model_identity},
                                text_field{"model_name", &p.model_name}, text_field{"source", &p.source}}) {
        auto s = r.text(f.name);
        if (!s) return unexpected(std::move(s).error());
        if (!valid_utf8(*s)) return r.bad(f.name, "not valid UTF-8");
        *f.out = std::move(*s);
    }
    if (auto ok = check_profile_name(p.name); !ok) return r.bad("name", ok.error().message);
    if (p.model_identity.empty()) return r.bad("model_identity", "must not be empty");

    // Both tables, the n-gram header and the checksum must fit in what is left.
    if (r.left() < cells * 8 + 4 + 8 + 8) return r.truncated("score");
    p.score.resize(cells);
    p.selection.resize(cells);
    for (auto& v : p.score) v = *r.f32("score");
    for (auto& v : p.selection) v = *r.f32("selection");
    MOED_TRY(check_table(r, "score", p.score, p.shape, 0.0, 1.0));
    MOED_TRY(check_table(r, "selection", p.selection, p.shape, p.shape.n_expert_used, p.shape.n_expert_used));
    for (std::size_t i = 0; i < cells; ++i) {
        // A chosen expert's probability is at most 1, so its score never exceeds its
        // selection frequency.
        if (p.score[i] > p.selection[i] + 1e-6f)
            return r.bad("score", fmt::format("layer {} expert {}: score {} exceeds its selection frequency {}",
                                              i / p.shape.n_expert, i % p.shape.n_expert, p.score[i], p.selection[i]));
    }

    auto order = r.u32("ngram_order");
    if (!order) return unexpected(std::move(order).error());
    if (*order != ngram_order_for(p.shape.n_layer))
        return r.bad("ngram_order", fmt::format("{} is not {} (min(3, n_layer))", *order, ngram_order_for(p.shape.n_layer)));
    p.ngram_order = *order;
    auto n_ngrams = r.u64("n_ngrams");
    if (!n_ngrams) return unexpected(std::move(n_ngrams).error());
    if (*n_ngrams > max_profile_ngrams)
        return r.bad("n_ngrams", fmt::format("{} is more than the {} allowed", *n_ngrams, max_profile_ngrams));
    if (r.left() != *n_ngrams * 12 + 8)
        return r.bad("n_ngrams", fmt::format("{} n-grams need {} bytes but {} remain", *n_ngrams, *n_ngrams * 12 + 8, r.left()));
    p.ngrams.resize(*n_ngrams);
    const std::uint32_t last_layer = p.shape.n_layer - p.ngram_order;
    for (std::size_t i = 0; i < p.ngrams.size(); ++i) {
        ngram_count& g = p.ngrams[i];
        g.key = *r.u64("ngrams");
        g.count = *r.u32("ngrams");
        if (g.count == 0) return r.bad("ngrams", fmt::format("entry {} has count 0", i));
        if (i > 0 && g.key <= p.ngrams[i - 1].key) return r.bad("ngrams", fmt::format("entry {} is out of order", i));
        if (ngram_layer(g.key) > last_layer)
            return r.bad("ngrams", fmt::format("entry {} starts at layer {}, past {}", i, ngram_layer(g.key), last_layer));
        for (int j = 0; j < static_cast<int>(max_ngram_order); ++j) {
            const std::uint32_t e = ngram_expert(g.key, j);
            const bool used = static_cast<std::uint32_t>(j) < p.ngram_order;
            if ((used && e >= p.shape.n_expert) || (!used && e != 0))
                return r.bad("ngrams", fmt::format("entry {} names expert {} (the model has {})", i, e, p.shape.n_expert));
        }
    }
    return p;
}

result<profile> read_profile(const std::string& path) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    // O_NOFOLLOW: a link could point anywhere (a device, another user's file).
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        if (err == ELOOP) return make_error(errc::bad_file, "profile file '{}': is a symbolic link, not read", path);
        return make_error(err == ENOENT ? errc::not_found : errc::io, "profile file '{}': cannot open: {}", path,
                          std::strerror(err));
    }
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } guard{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) return make_error(errc::io, "profile file '{}': cannot stat: {}", path, std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        return make_error(errc::bad_file, "profile file '{}': not a regular file ({}), not read", path,
                          file_kind(st.st_mode));
    if (static_cast<std::uint64_t>(st.st_size) > max_profile_file_bytes)
        return make_error(errc::bad_file, "profile file '{}': {} bytes is more than the {} allowed", path, st.st_size,
                          max_profile_file_bytes);
    std::vector<std::byte> bytes(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(errc::io, "profile file '{}': read failed: {}", path, std::strerror(errno));
        if (n == 0) break;  // shrank under us: parsing reports the truncation
        done += static_cast<std::size_t>(n);
    }
    bytes.resize(done);
    return parse_profile(bytes, path);
}

result<void> write_profile(const std::string& path, const profile& p) {
    const std::vector<std::byte> bytes = serialize_profile(p);
    const std::filesystem::path target(path);
    const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
    const std::string tmp = profile_temp_path(path);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return make_error(errc::io, "profile file '{}': cannot create '{}': {}", path, tmp, std::strerror(errno));
    auto fail = [&](std::string_view what) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return make_error(errc::io, "profile file '{}': {}: {}", path, what, std::strerror(err));
    };
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return fail("write failed");
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0) return fail("fsync failed");
    if (::close(fd) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return make_error(errc::io, "profile file '{}': close failed: {}", path, std::strerror(err));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return make_error(errc::io, "profile file '{}': cannot rename '{}' into place: {}", path, tmp, std::strerror(err));
    }
    // The rename itself is durable only once the directory is.
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        if (::fsync(dfd) != 0)
            MOED_LOG_WARN("profile", "fsync of directory '{}' failed: {}", dir.string(), std::strerror(errno));
        ::close(dfd);
    }
    return {};
}

std::string profile_temp_path(const std::string& path) {
    const std::filesystem::path target(path);
    const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
    return (dir / fmt::format(".{}{}{}", target.filename().string(), temp_infix, ::getpid())).string();
}

bool is_profile_temp_name(std::string_view file_name) {
    if (!file_name.starts_with('.')) return false;
    const std::size_t infix = file_name.rfind(temp_infix);
    if (infix == std::string_view::npos) return false;
    const std::string_view digits = file_name.substr(infix + temp_infix.size());
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return false;
    const std::string_view target = file_name.substr(1, infix - 1);
    if (!target.ends_with(profile_extension)) return false;
    return check_profile_name(target.substr(0, target.size() - profile_extension.size())).has_value();
}

result<void> check_profile_model(const profile& p, std::string_view file, std::string_view identity,
                                 const routing_shape& shape) {
    if (p.model_identity != identity)
        return make_error(errc::unsupported,
                          "profile file '{}' was made for model {} ({}), not for the model served here ({}); create it "
                          "again for this model",
                          file, p.model_identity, p.model_name.empty() ? std::string("unnamed") : p.model_name, identity);
    if (!(p.shape == shape))
        return make_error(errc::unsupported,
                          "profile file '{}' describes {} layers x {} experts (top-{}) but the model has {} x {} (top-{})",
                          file, p.shape.n_layer, p.shape.n_expert, p.shape.n_expert_used, shape.n_layer, shape.n_expert,
                          shape.n_expert_used);
    return {};
}

std::vector<ExpertId> profile_hot_set(const profile& p, std::uint32_t per_layer) {
    std::vector<ExpertId> out;
    out.reserve(static_cast<std::size_t>(p.shape.n_layer) * per_layer);
    for (std::uint32_t l = 0; l < p.shape.n_layer; ++l) {
        for (std::uint32_t e : p.top_experts(l, per_layer)) {
            if (p.layer_score(l)[e] > 0.0f) out.push_back(ExpertId{l, e});
        }
    }
    return out;
}

std::vector<float> profile_expert_scores(const profile& p) {
    std::vector<float> out(p.score.size(), 0.0f);
    for (std::uint32_t l = 0; l < p.shape.n_layer; ++l) {
        const std::span<const float> s = p.layer_score(l);
        const float top = *std::max_element(s.begin(), s.end());
        if (!(top > 0.0f)) continue;
        for (std::uint32_t e = 0; e < p.shape.n_expert; ++e)
            out[static_cast<std::size_t>(l) * p.shape.n_expert + e] = s[e] / top;
    }
    return out;
}

}  // namespace moed::scheduler
