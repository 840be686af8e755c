// Checks the process memory reader: VmRSS, VmHWM and VmLck are taken from /proc status text
// in its real format (kB, tabs and spaces), a missing line leaves its figure 0, a line with a
// value that is not "<number> kB" is an error naming it, and this process's own figures and
// the machine's physical memory come back non-zero and consistent.
#include <gtest/gtest.h>

#include "common/process_memory.h"

namespace moed {
namespace {

TEST(process_memory, parses_the_kernel_format) {
    const auto m = parse_process_memory(
        "Name:\tmoed\nVmPeak:\t  900000 kB\nVmHWM:\t   52000 kB\nVmRSS:\t   51200 kB\nVmLck:\t    2048 kB\n"
        "Threads:\t4\n");
    ASSERT_TRUE(m) << m.error().message;
    EXPECT_EQ(m->rss_bytes, 51200u * 1024);
    EXPECT_EQ(m->rss_peak_bytes, 52000u * 1024);
    EXPECT_EQ(m->locked_bytes, 2048u * 1024);
}

TEST(process_memory, missing_lines_stay_zero_and_bad_values_are_errors) {
    const auto partial = parse_process_memory("VmRSS:\t 10 kB");  // no newline at the end, no VmHWM/VmLck
    ASSERT_TRUE(partial);
    EXPECT_EQ(partial->rss_bytes, 10u * 1024);
    EXPECT_EQ(partial->rss_peak_bytes, 0u);
    EXPECT_EQ(partial->locked_bytes, 0u);

    for (const char* bad : {"VmRSS:\t lots kB\n", "VmHWM:\t 12 MB\n", "VmLck:\t\n", "VmRSS:\t 99999999999999999999 kB\n"}) {
        const auto m = parse_process_memory(bad);
        ASSERT_FALSE(m) << bad;
        EXPECT_NE(m.error().message.find(std::string(bad).substr(0, 6)), std::string::npos) << m.error().message;
    }
}

TEST(process_memory, this_process_and_this_machine) {
    const auto m = read_process_memory();
    ASSERT_TRUE(m) << m.error().message;
    EXPECT_GT(m->rss_bytes, 0u);
    EXPECT_GE(m->rss_peak_bytes, m->rss_bytes);
    EXPECT_GT(physical_memory_bytes(), m->rss_bytes);
}

}  // namespace
}  // namespace moed
