// bench/io: random-read bandwidth of the block reader, the way the expert tier reads: one
// block (by default the size of a Qwen3-30B-A3B Q4_K expert matrix slice, 1179648 bytes)
// at a random block-aligned offset of a large file, at queue depths 1..64. Prints one JSON
// object: per depth GB/s, IOPS and latency p50/p99. Compare with fio: bench/compare-io.sh.
//
//   bench-io [--file PATH] [--size 6G] [--block-size 1179648] [--depths 1,2,4,8,16,32,64]
//            [--seconds 5 | --bytes N] [--mode auto|uring_direct|uring_buffered|
//            pread_direct|pread_buffered] [--seed N] [--no-register]
//
// The file is created (pseudo-random bytes, so no layer can shortcut zeros) when it is
// missing or smaller than --size, and reused otherwise; it is then dropped from the page
// cache (posix_fadvise DONTNEED) so buffered modes start cold too. O_DIRECT bypasses the
// cache anyway. The read buffers are the registered region, as the host slab would be.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "storage/block_reader.h"

namespace {

using clock_type = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "bench-io: %s\n", message.c_str());
    std::exit(2);
}

// "6G", "512M", "1179648": bytes.
std::uint64_t parse_bytes(const std::string& flag, const std::string& text) {
    std::uint64_t value = 0;
    const char* begin = text.data();
    const char* end = begin + text.size();
    auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc() || ptr == begin) fail("bad value for " + flag + ": '" + text + "'");
    std::uint64_t scale = 1;
    if (ptr != end) {
        const std::string suffix(ptr, end);
        if (suffix == "K" || suffix == "k") scale = 1ull << 10;
        else if (suffix == "M" || suffix == "m") scale = 1ull << 20;
        else if (suffix == "G" || suffix == "g") scale = 1ull << 30;
        else fail("bad suffix for " + flag + ": '" + text + "' (K, M or G)");
    }
    if (value == 0) fail(flag + " must be positive");
    return value * scale;
}

std::vector<std::uint32_t> parse_depths(const std::string& text) {
    std::vector<std::uint32_t> depths;
    std::size_t at = 0;
    while (at <= text.size()) {
        const std::size_t comma = std::min(text.find(',', at), text.size());
        const std::uint64_t d = parse_bytes("--depths", text.substr(at, comma - at));
        if (d > 4096) fail("--depths: at most 4096");
        depths.push_back(static_cast<std::uint32_t>(d));
        at = comma + 1;
    }
    return depths;
}

// Creates or extends `path` to `size` bytes of pseudo-random data, then syncs it.
void ensure_file(const std::string& path, std::uint64_t size) {
    struct stat st{};
    if (::stat(path.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) >= size) return;
    std::fprintf(stderr, "bench-io: writing %.2f GiB to %s\n", static_cast<double>(size) / (1ull << 30), path.c_str());
    const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) fail("cannot create " + path + ": " + std::strerror(errno));
    constexpr std::size_t chunk = 8u << 20;
    std::vector<std::uint64_t> data(chunk / 8);
    std::mt19937_64 rng(12345);
    for (std::uint64_t at = 0; at < size; at += chunk) {
        for (auto& word : data) word = rng();
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, size - at));
        std::size_t done = 0;
        while (done < n) {
            const ssize_t w = ::pwrite(fd, reinterpret_cast<const char*>(data.data()) + done, n - done,
                                       static_cast<off_t>(at + done));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) fail("writing " + path + ": " + std::strerror(errno));
            done += static_cast<std::size_t>(w);
        }
        // Keep the page cache from filling with the file while it is written.
        if ((at / chunk) % 16 == 15) {
            ::fdatasync(fd);
            ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        }
    }
    if (::fsync(fd) != 0) fail("fsync " + path + ": " + std::strerror(errno));
    ::close(fd);
}

void drop_from_page_cache(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open " + path + ": " + std::strerror(errno));
    ::fdatasync(fd);
    if (::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) std::fprintf(stderr, "bench-io: fadvise failed\n");
    ::close(fd);
}

double percentile(std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0.0;
    const std::size_t i = std::min(sorted.size() - 1, static_cast<std::size_t>(p * static_cast<double>(sorted.size())));
    return sorted[i];
}

struct depth_result {
    std::uint32_t depth = 0;
    std::uint64_t bytes = 0;
    std::uint64_t reads = 0;
    std::uint64_t short_reads = 0;
    double seconds = 0;
    double latency_us_p50 = 0;
    double latency_us_p99 = 0;
};

// Keeps `depth` reads in flight until the time or byte budget is spent.
depth_result run_depth(moed::storage::block_reader& reader, std::byte* region, std::uint32_t depth,
                       std::uint64_t block_size, std::uint64_t n_blocks, double seconds, std::uint64_t byte_budget,
                       std::mt19937_64& rng) {
    using namespace moed::storage;
    depth_result r;
    r.depth = depth;
    std::vector<clock_type::time_point> started(depth);
    std::vector<double> latencies_us;
    latencies_us.reserve(1 << 20);
    std::vector<read_completion> done(depth);
    std::vector<read_op> ops;
    ops.reserve(depth);
    std::vector<std::uint32_t> free_slots;
    for (std::uint32_t i = depth; i > 0; --i) free_slots.push_back(i - 1);

    const auto start = clock_type::now();
    const auto deadline = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    std::uint64_t issued_bytes = 0;
    bool issuing = true;
    for (;;) {
        if (issuing) {
            ops.clear();
            // Slots are taken from the back of free_slots, so the accepted ones are its tail.
            for (std::size_t k = 0; k < free_slots.size(); ++k) {
                const std::uint32_t slot = free_slots[free_slots.size() - 1 - k];
                if (byte_budget > 0 && issued_bytes + block_size * (ops.size() + 1) > byte_budget) break;
                const std::uint64_t offset = (rng() % n_blocks) * block_size;
                ops.push_back(read_op{offset, static_cast<std::uint32_t>(block_size),
                                      region + std::size_t{slot} * block_size, slot});
            }
            if (!ops.empty()) {
                const auto now = clock_type::now();
                auto accepted = reader.submit(ops);
                if (!accepted) fail(accepted.error().message);
                for (std::size_t i = 0; i < *accepted; ++i) started[ops[i].user_data] = now;
                free_slots.resize(free_slots.size() - *accepted);
                issued_bytes += *accepted * block_size;
            }
        }
        if (reader.in_flight() == 0 && !issuing) break;
        const std::size_t n = reader.reap(done, true);
        const auto now = clock_type::now();
        for (std::size_t i = 0; i < n; ++i) {
            const auto slot = static_cast<std::uint32_t>(done[i].user_data);
            if (done[i].result < 0) fail("read failed: " + std::string(std::strerror(static_cast<int>(-done[i].result))));
            if (static_cast<std::uint64_t>(done[i].result) < block_size) ++r.short_reads;
            r.bytes += static_cast<std::uint64_t>(done[i].result);
            ++r.reads;
            latencies_us.push_back(std::chrono::duration<double, std::micro>(now - started[slot]).count());
            free_slots.push_back(slot);
        }
        if (issuing && (now >= deadline || (byte_budget > 0 && issued_bytes >= byte_budget))) issuing = false;
    }
    r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    std::sort(latencies_us.begin(), latencies_us.end());
    r.latency_us_p50 = percentile(latencies_us, 0.50);
    r.latency_us_p99 = percentile(latencies_us, 0.99);
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    std::string path = "/var/tmp/moed-bench-io.dat";
    std::uint64_t size = 6ull << 30;
    std::uint64_t block_size = 1179648;
    std::vector<std::uint32_t> depths = {1, 2, 4, 8, 16, 32, 64};
    double seconds = 5.0;
    std::uint64_t byte_budget = 0;
    std::string mode = "auto";
    std::uint64_t seed = 1;
    bool register_region = true;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) fail("missing value for " + flag);
            return argv[++i];
        };
        if (flag == "--file") path = value();
        else if (flag == "--size") size = parse_bytes(flag, value());
        else if (flag == "--block-size") block_size = parse_bytes(flag, value());
        else if (flag == "--depths") depths = parse_depths(value());
        else if (flag == "--seconds") seconds = std::atof(value().c_str());
        else if (flag == "--bytes") byte_budget = parse_bytes(flag, value());
        else if (flag == "--mode") mode = value();
        else if (flag == "--seed") seed = parse_bytes(flag, value());
        else if (flag == "--no-register") register_region = false;
        else fail("unknown flag " + flag + " (see the comment at the top of bench/io.cpp)");
    }
    if (seconds <= 0) fail("--seconds must be positive");
    if (block_size % 4096 != 0 || block_size > (1ull << 31)) fail("--block-size must be a multiple of 4096, at most 2G");
    if (size < block_size) fail("--size must hold at least one block");
    moed::set_log_level(moed::log_level::warn);

    ensure_file(path, size);
    drop_from_page_cache(path);

    using namespace moed::storage;
    const std::uint32_t max_depth = *std::max_element(depths.begin(), depths.end());
    const std::size_t region_bytes = std::size_t{max_depth} * block_size;
    auto* region = static_cast<std::byte*>(std::aligned_alloc(4096, region_bytes));
    if (region == nullptr) fail("cannot allocate the read buffers");
    std::memset(region, 0, region_bytes);  // fault the pages in before timing

    block_reader_options options;
    options.path = path;
    options.queue_depth = max_depth;
    if (register_region) options.registered_region = {region, region_bytes};
    if (mode == "uring_direct" || mode == "uring_buffered" || mode == "pread_direct" || mode == "pread_buffered") {
        options.allow_uring = mode.starts_with("uring");
        options.allow_direct = mode.ends_with("direct");
    } else if (mode != "auto") {
        fail("unknown --mode " + mode);
    }
    auto opened = open_block_reader(options);
    if (!opened) fail(opened.error().message);
    block_reader& reader = **opened;
    if (mode != "auto" && io_mode_name(reader.mode()) != mode) {
        fail("asked for " + mode + " but the reader runs " + std::string(io_mode_name(reader.mode())));
    }
    auto identity = reader.identity();
    if (!identity) fail(identity.error().message);
    const std::uint64_t n_blocks = std::min(size, identity->size_bytes) / block_size;

    std::mt19937_64 rng(seed);
    nlohmann::ordered_json results = nlohmann::ordered_json::array();
    double best_gbps = 0;
    nlohmann::ordered_json best;
    for (const std::uint32_t depth : depths) {
        const depth_result r = run_depth(reader, region, depth, block_size, n_blocks, seconds, byte_budget, rng);
        const double gbps = static_cast<double>(r.bytes) / r.seconds / 1e9;
        nlohmann::ordered_json row = {
            {"depth", depth},
            {"bytes", r.bytes},
            {"reads", r.reads},
            {"short_reads", r.short_reads},
            {"seconds", r.seconds},
            {"gb_per_s", gbps},
            {"iops", static_cast<double>(r.reads) / r.seconds},
            {"latency_us_p50", r.latency_us_p50},
            {"latency_us_p99", r.latency_us_p99},
        };
        if (gbps > best_gbps) {
            best_gbps = gbps;
            best = row;
        }
        results.push_back(row);
        std::fprintf(stderr, "bench-io: depth %u: %.3f GB/s\n", depth, gbps);
    }
    const nlohmann::ordered_json out = {
        {"file", path},
        {"file_bytes", identity->size_bytes},
        {"block_size", block_size},
        {"mode", std::string(io_mode_name(reader.mode()))},
        {"alignment", reader.alignment()},
        {"registered_buffers", register_region},
        {"seconds_per_depth", seconds},
        {"bytes_per_depth", byte_budget},
        {"results", results},
        {"best", best},
    };
    std::printf("%s\n", out.dump(2).c_str());
    opened->reset();
    std::free(region);
    return 0;
}
