// Task profiles (PreMoe): what a task's prompts do to the router, stored per model.
//
// A profile holds, per MoE layer l and expert e, the task-conditioned expected selection
// score TCESS(l, e) = mean over the task's tokens x of p_l(e|x) * [e in top-k_l(x)], the
// selection frequency (the fraction of tokens that chose e), and the counts of the
// tokens' routing n-grams (routing_stats.h) that the matcher scores a prompt against.
// Metadata: name, the model identity (scheduler/model_identity.h) it was made for, the
// model's name, how many prompts and tokens it was made from, a short description of their
// source, and when it was made.
//
// Files: <state_dir>/profiles/<name>.profile, binary, little-endian, versioned:
//   offset  bytes      field
//   0       8          magic "MOEDPROF"
//   8       4          u32 version (profile_format_version)
//   12      4          u32 n_layer
//   16      4          u32 n_expert
//   20      4          u32 n_expert_used
//   24      4          u32 n_prompts (>= 1)
//   28      8          i64 n_tokens (>= 1)
//   36      8          i64 created, Unix seconds
//   44      ...        4 strings, each u32 byte length + UTF-8 bytes: name, model_identity,
//                      model_name, source
//   ...     4*L*E      f32 score [n_layer][n_expert]       each in [0, 1]
//   ...     4*L*E      f32 selection [n_layer][n_expert]   each in [0, 1], a layer sums to
//                                                          n_expert_used
//   ...     4          u32 ngram_order (= min(3, n_layer))
//   ...     8          u64 n_ngrams (<= max_profile_ngrams)
//   ...     12*n       n-grams: u64 key (routing_stats.h, strictly increasing), u32 count >= 1
//   end-8   8          u64 FNV-1a of every byte before it
// Reading trusts nothing: every length is checked against the bytes left and the limits
// below, every value against its range, and an error names the file and the field.
// Threads: the functions here are pure or touch only the files they are given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/ids.h"
#include "common/result.h"
#include "scheduler/routing_stats.h"

namespace moed::scheduler {

inline constexpr std::uint32_t profile_format_version = 1;
inline constexpr std::string_view profile_magic = "MOEDPROF";
inline constexpr std::string_view profile_extension = ".profile";
inline constexpr std::size_t max_profile_name_bytes = 64;
// Limits on what a file may claim; far above real profiles, low enough to bound memory.
inline constexpr std::size_t max_profile_string_bytes = 4096;
inline constexpr std::uint64_t max_profile_ngrams = 1u << 20;
inline constexpr std::uint64_t max_profile_file_bytes = 64ull << 20;
inline constexpr std::uint64_t max_profile_cells = 1u << 22;  // n_layer * n_expert

struct profile {
    std::string name;
    std::string model_identity;
    std::string model_name;  // the served model's name, for people (not checked)
    std::string source;      // where the prompts came from, e.g. "api: 25 prompts"
    std::uint32_t n_prompts = 0;
    std::int64_t n_tokens = 0;
    std::int64_t created_unix = 0;
    routing_shape shape;
    std::vector<float> score;      // TCESS [n_layer][n_expert]
    std::vector<float> selection;  // selection frequency [n_layer][n_expert]
    std::uint32_t ngram_order = 0;
    std::vector<ngram_count> ngrams;  // sorted by key

    std::span<const float> layer_score(std::uint32_t layer) const noexcept {
        return std::span<const float>(score).subspan(static_cast<std::size_t>(layer) * shape.n_expert, shape.n_expert);
    }
    // The `k` experts of `layer` with the highest score (ties: lower index first).
    std::vector<std::uint32_t> top_experts(std::uint32_t layer, std::uint32_t k) const;
};

// Names are 1..64 characters of [A-Za-z0-9._-], not starting with '.', so a name is always
// a plain file name. The error says which rule failed.
result<void> check_profile_name(std::string_view name);

// A profile from accumulated statistics (at least one token); n-grams beyond
// max_profile_ngrams keep the most frequent.
profile make_profile(std::string name, std::string model_identity, std::string model_name, std::string source,
                     std::uint32_t n_prompts, std::int64_t created_unix, const routing_accumulator& stats);

// The file image (no validation: tests write broken profiles with it).
std::vector<std::byte> serialize_profile(const profile& p);
// Parses and validates a file image; `file` names it in errors ("profile file 'x': ...").
result<profile> parse_profile(std::span<const std::byte> bytes, std::string_view file);

// Reads `path` (at most max_profile_file_bytes) and parses it. Only a regular file is read:
// a FIFO, device or directory is refused without waiting for a writer (the open does not
// block), and a symbolic link is not followed; each is errc::bad_file naming the path.
result<profile> read_profile(const std::string& path);
// Writes atomically: a temporary file in the same directory (profile_temp_path), fsync,
// rename, fsync of the directory; a crash leaves the old file or the new one, never a torn
// one, plus at most the temporary file, which profile_store::load() removes.
result<void> write_profile(const std::string& path, const profile& p);
// The temporary file write_profile() writes `path` through: ".<file name>.tmp.<pid>" in the
// same directory.
std::string profile_temp_path(const std::string& path);
// Whether a file name (no directory) has the form profile_temp_path() gives a profile file:
// "." + a valid profile name + profile_extension + ".tmp." + decimal digits.
bool is_profile_temp_name(std::string_view file_name);

// Refuses a profile made for another model (identity or routing shape differ); the error
// names the file, the profile's model identity and ours.
result<void> check_profile_model(const profile& p, std::string_view file, std::string_view identity,
                                 const routing_shape& shape);

// The warm-up set of a profile: per layer, the `per_layer` experts with the highest score
// (layer-major), for the expert source's pinned hot set.
std::vector<ExpertId> profile_hot_set(const profile& p, std::uint32_t per_layer);
// Per-expert eviction bias [n_layer][n_expert] in [0, 1]: the score divided by its layer's
// highest score (each layer's most needed expert scores 1; a layer without scores is 0).
std::vector<float> profile_expert_scores(const profile& p);

}  // namespace moed::scheduler
