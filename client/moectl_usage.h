// moectl's help: one block per command, shown together by `moectl --help` and alone (with
// the global options and exit codes) by `moectl COMMAND --help` or `moectl help COMMAND`.
// The exit codes listed here are part of moectl's interface.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace moed::moectl {

struct command_help {
    std::string_view command;   // "status", "profile list", ...
    std::string_view synopsis;  // after "moectl [GLOBAL OPTIONS] "
    std::string_view block;     // its lines in the command list
};

inline constexpr command_help command_helps[] = {
    {"status", "status [--explain]", R"(  status [--explain]     a summary line (model, its size and where it sits, processor),
                         memory by kind (dense weights, KV cache, host slab and its slot
                         classes, scratch, RSS), the tiers (capacity, used, experts
                         resident, hit rate, read GB/s, load latency p50/p99, I/O mode),
                         prefetch and ring, per-layer residency map, running and queued
                         requests
      --explain          what the terms mean (ring, hot set, recall, late, wasted, ...)
)"},
    {"generate", "generate [OPTIONS] PROMPT...", R"(  generate [OPTIONS] PROMPT...
                         stream a completion to stdout as it is generated
                         (PROMPT "-" reads the prompt from stdin; "--" ends the
                         options); a generation moed stops before it finishes (a
                         cancellation while it shuts down) exits 1
      --chat             send the prompt as a user message (/v1/chat/completions)
      --system TEXT      a system message first (implies --chat)
      --model NAME       the model to ask for (default: the one moed serves)
      --max-tokens N     --temperature T   --top-p P   --top-k K   --min-p P
      --seed S           --stop TEXT (repeatable)
      --profile NAME     run with this task profile (default: moed matches one)
      --prune K          route only to the profile's top K experts per layer
)"},
    {"profile list", "profile list", R"(  profile list           the task profiles moed keeps (and files it could not use)
)"},
    {"profile show", "profile show NAME", R"(  profile show NAME      a profile: its prompts, tokens and each layer's top experts
)"},
    {"profile create", "profile create NAME --prompts FILE.jsonl [--replace] [--source TEXT]",
     R"(  profile create NAME --prompts FILE.jsonl [--replace] [--source TEXT]
                         make a profile from example prompts of a task: one JSON
                         object per line with a "text" (or "prompt") string; moed
                         runs them through the model (this may take a while)
)"},
    {"profile delete", "profile delete NAME", R"(  profile delete NAME    delete a profile
)"},
    {"models", "models", R"(  models                 list the models moed serves
)"},
    {"health", "health", R"(  health                 check that moed answers (GET /healthz)
)"},
};

inline constexpr std::string_view usage_head = R"(usage: moectl [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]

Talks to moed, the Mixture-of-Experts inference daemon, over its Unix socket.
Text from moed other than generated text is shown with control characters and invalid
UTF-8 escaped (\x1b, \n, \u{009b}, \xff; a backslash as \\).

Commands:
)";

inline constexpr std::string_view usage_tail = R"(  help [COMMAND]         this text, or one command's (also COMMAND --help)
)";

inline constexpr std::string_view options_and_exit_codes = R"(
Options:
  --socket PATH          moed's socket (default: $MOED_SOCKET, else your own moed's
                         $XDG_RUNTIME_DIR/moed/moed.sock when it runs, else /run/moed/moed.sock)
  --json                 print moed's JSON answer as received (generate: one
                         non-streamed completion response)
  --timeout SECONDS      longest wait for moed's next bytes (default 600)
  --version              print moectl's version
  -h, --help             this text (after a command: that command's)

Exit codes:
  0  success
  1  moed answered with an error, or ended a generation before it finished (the
     message is printed; with --json, moed's error JSON goes to stdout)
  2  usage error (bad command line, or input that is not valid UTF-8)
  3  moed is not running or cannot be reached (no socket, connection refused,
     permission denied, timeout, connection lost)
)";

inline std::string usage_text() {
    std::string text(usage_head);
    for (const command_help& h : command_helps) text += h.block;
    text += usage_tail;
    text += options_and_exit_codes;
    return text;
}

// The help of one command, or of every command starting with `command` + " " (`profile`
// gives the four profile subcommands); empty for an unknown command.
inline std::string command_usage(std::string_view command) {
    std::string synopses;
    std::string blocks;
    for (const command_help& h : command_helps) {
        const bool match = h.command == command || (h.command.size() > command.size() &&
                                                    h.command.substr(0, command.size()) == command &&
                                                    h.command[command.size()] == ' ');
        if (!match) continue;
        synopses += fmt::format("{}moectl [GLOBAL OPTIONS] {}\n", synopses.empty() ? "usage: " : "       ", h.synopsis);
        blocks += h.block;
    }
    if (blocks.empty()) return {};
    return synopses + "\n" + blocks + std::string(options_and_exit_codes);
}

// Whether the command's arguments ask for its help: -h or --help before any "--".
inline bool asks_for_help(const std::vector<std::string>& args) {
    for (const std::string& a : args) {
        if (a == "--") return false;
        if (a == "-h" || a == "--help") return true;
    }
    return false;
}

}  // namespace moed::moectl
