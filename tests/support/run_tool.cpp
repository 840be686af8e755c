#include "tests/support/run_tool.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>

namespace moed::test {

namespace {

std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) {
        if (c == '\'') q.append("'\\''");
        else q.push_back(c);
    }
    q.push_back('\'');
    return q;
}

}  // namespace

tool_result run_tool(const std::string& tool, const std::vector<std::string>& args, bool merge_stderr) {
    std::string cmd = shell_quote(std::string(MOED_BINARY_DIR) + "/" + tool);
    for (const auto& a : args) cmd += ' ' + shell_quote(a);
    if (merge_stderr) cmd += " 2>&1";
    tool_result r;
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return r;
    std::array<char, 4096> buf{};
    std::size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

}  // namespace moed::test
