// Fuzzes the routing trace file reader (scheduler/trace.cpp: trace_reader, read_trace) and
// what consumes a trace it accepts (scheduler/trace_data.cpp). The input is a file in
// memory, read by path with the reader's real pread path. A trace the reader accepts must:
// pass validate_trace (the reader checked every record); go through decode_order without a
// crash (it may refuse a position recorded twice); and, written again with trace_writer,
// read back as the same records, and as the same bytes when its tag names are distinct
// (the writer numbers a repeated name once).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "common/log.h"
#include "fuzz/fuzz_support.h"
#include "scheduler/trace.h"
#include "scheduler/trace_data.h"

namespace {

using namespace moed;

bool same_records(const std::vector<scheduler::trace_record>& a, const std::vector<scheduler::trace_record>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto& x = a[i];
        const auto& y = b[i];
        if (x.seq != y.seq || x.tag != y.tag || x.pos != y.pos || x.token != y.token || x.layer != y.layer ||
            x.prefill != y.prefill || x.chosen != y.chosen || x.probs != y.probs || x.lookahead != y.lookahead)
            return false;
    }
    return true;
}

std::vector<std::uint8_t> contents(int fd) {
    std::vector<std::uint8_t> out;
    std::uint8_t buffer[65536];
    for (off_t at = 0;;) {
        const ssize_t n = ::pread(fd, buffer, sizeof buffer, at);
        if (n < 0) fuzz::fail("reading the written trace failed");
        if (n == 0) return out;
        out.insert(out.end(), buffer, buffer + n);
        at += n;
    }
}

void check_trace(scheduler::trace_data& trace, std::span<const std::uint8_t> bytes) {
    auto valid = scheduler::validate_trace(trace);
    MOED_FUZZ_CHECK(valid.has_value(), "the reader accepted a trace validate_trace refuses: {}",
                    valid ? "" : valid.error().message);
    ignore_error(scheduler::decode_order(trace));
    for (std::uint32_t t = 0; t < trace.tag_names.size() + 1; ++t) (void)scheduler::tag_domain(trace, t);

    static const int out_fd = ::memfd_create("trace-fuzz-out", MFD_CLOEXEC);
    const std::string out_path = fmt::format("/proc/self/fd/{}", out_fd);
    auto writer = scheduler::trace_writer::create(out_path, trace.info);
    MOED_FUZZ_CHECK(writer.has_value(), "the writer refuses the info the reader accepted: {}",
                    writer ? "" : writer.error().message);
    const std::set<std::string> distinct(trace.tag_names.begin(), trace.tag_names.end());
    const bool names_distinct = distinct.size() == trace.tag_names.size();
    if (names_distinct) {
        for (const auto& name : trace.tag_names) {
            auto tag = writer->intern_tag(name);
            MOED_FUZZ_CHECK(tag.has_value(), "the writer refuses tag name {:?}", name);
        }
    }
    for (std::size_t i = 0; i < trace.records.size(); ++i) {
        auto written = writer->write(trace.records[i]);
        MOED_FUZZ_CHECK(written.has_value(), "the writer refuses record {} the reader accepted: {}", i,
                        written ? "" : written.error().message);
    }
    auto closed = writer->close();
    MOED_FUZZ_CHECK(closed.has_value(), "closing the written trace failed");

    scheduler::trace_info info;
    std::vector<std::string> names;
    auto again = scheduler::read_trace(out_path, info, &names);
    MOED_FUZZ_CHECK(again.has_value(), "the trace written again does not read: {}", again ? "" : again.error().message);
    MOED_FUZZ_CHECK(same_records(*again, trace.records), "the trace written again has other records");
    MOED_FUZZ_CHECK(info.model_name == trace.info.model_name && info.model_id == trace.info.model_id &&
                        info.expert_bytes == trace.info.expert_bytes,
                    "the trace written again has another header");
    if (names_distinct) {
        MOED_FUZZ_CHECK(names == trace.tag_names, "the trace written again has other tag names");
        const std::vector<std::uint8_t> rewritten = contents(out_fd);
        MOED_FUZZ_CHECK(rewritten.size() == bytes.size() && std::memcmp(rewritten.data(), bytes.data(), bytes.size()) == 0,
                        "the trace written again is {} other bytes (read {})", rewritten.size(), bytes.size());
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static moed::fuzz::memory_file file("trace-fuzz");
    file.assign({data, size});
    moed::scheduler::trace_data trace;
    auto records = moed::scheduler::read_trace(file.path(), trace.info, &trace.tag_names);
    if (!records) {
        MOED_FUZZ_CHECK(!records.error().message.empty(), "an error without a message");
        return 0;
    }
    trace.records = std::move(*records);
    check_trace(trace, {data, size});
    return 0;
}
