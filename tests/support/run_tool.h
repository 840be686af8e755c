// Runs a built command-line tool as a user would, through the shell with every argument
// quoted; its exit status and stdout (stderr too when asked). Shared by the tools' tests.
#pragma once

#include <string>
#include <vector>

namespace moed::test {

struct tool_result {
    int status = -1;  // the exit status; -1 when the tool did not exit normally
    std::string out;
};

// `tool` is a path under the build directory, e.g. "tools/moe-run".
tool_result run_tool(const std::string& tool, const std::vector<std::string>& args, bool merge_stderr = false);

}  // namespace moed::test
