// The process's memory as the kernel counts it, and the machine's physical memory: what
// /v1/status reports beside moed's own figures, and what budgets are checked against.
// Threads: every function may be called from any thread; none keeps state.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/result.h"

namespace moed {

struct process_memory {
    std::uint64_t rss_bytes = 0;       // VmRSS: resident now
    std::uint64_t rss_peak_bytes = 0;  // VmHWM: the most resident at once since start
    std::uint64_t locked_bytes = 0;    // VmLck: locked with mlock
};

// Reads VmRSS, VmHWM and VmLck from the text of /proc/<pid>/status ("VmRSS:    1234 kB").
// A line that is missing leaves its figure 0 (VmLck and VmHWM are absent on some kernels);
// a line whose value is not "<number> kB" is an error naming it.
result<process_memory> parse_process_memory(std::string_view proc_status);

// parse_process_memory() of /proc/self/status; an error names the file when it cannot be read.
result<process_memory> read_process_memory();

// The machine's physical memory (sysconf _SC_PHYS_PAGES x _SC_PAGESIZE); 0 when unknown.
std::uint64_t physical_memory_bytes() noexcept;

}  // namespace moed
