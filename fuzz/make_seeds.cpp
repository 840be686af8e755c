// moed-fuzz-seeds DIR: writes the binary seed files of the fuzz corpora under DIR (normally
// fuzz/corpus) with the project's own writers, so every seed is a file moed itself makes:
//   gguf/     tiny qwen3moe models (moe-synth's library) and a vocabulary-only file with a
//             ChatML and one with an unknown chat template (gguf_writer)
//   profile/  task profiles of three routing shapes (make_profile, serialize_profile)
//   trace/    routing traces with and without tags, lookahead and expert sizes, and one
//             with more than 256 experts (two-byte expert ids) (trace_writer)
// Each seed stays well under 64 KiB. The text seeds (requests, messages, configs) are
// written by hand.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "scheduler/profile.h"
#include "scheduler/routing_stats.h"
#include "scheduler/trace.h"
#include "storage/gguf.h"
#include "tools/synth_model.h"

namespace {

using namespace moed;
namespace fs = std::filesystem;

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "moed-fuzz-seeds: %s\n", what.c_str());
    std::exit(1);
}

template <typename T>
T must(result<T> r, const std::string& what) {
    if (!r) die(what + ": " + r.error().message);
    if constexpr (!std::is_void_v<T>) return std::move(*r);
}

void write_bytes(const fs::path& path, const std::vector<std::byte>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) die("cannot write " + path.string());
}

void make_gguf(const fs::path& dir) {
    tools::synth_shape tiny;
    tiny.layers = 1;
    tiny.embd = 32;
    tiny.heads = 1;
    tiny.kv_heads = 1;
    tiny.head_dim = 32;
    tiny.experts = 2;
    tiny.experts_used = 1;
    tiny.ff = 32;
    tiny.vocab = 258;
    tiny.ctx = 64;
    must(tools::synthesize_model((dir / "tiny-q8_0.gguf").string(), tiny, "Q8_0", 1), "tiny Q8_0 model");
    tiny.layers = 2;
    tiny.experts = 4;
    tiny.experts_used = 2;
    tiny.embd = 16;
    tiny.ff = 16;
    tiny.head_dim = 16;
    must(tools::synthesize_model((dir / "tiny-f16.gguf").string(), tiny, "F16", 2), "tiny F16 model");

    // The tiny model's metadata without its tensors, plus a chat template.
    auto model = must(storage::gguf_file::open((dir / "tiny-q8_0.gguf").string()), "reading the tiny model");
    for (const auto& [name, chat_template] :
         {std::pair<const char*, const char*>{"vocab-chatml.gguf",
                                              "{% for message in messages %}<|im_start|>{{ message.role }}\n"
                                              "{{ message.content }}<|im_end|>\n{% endfor %}"},
          std::pair<const char*, const char*>{"vocab-unknown-template.gguf",
                                              "{{ bos_token }}[INST] {{ message }} [/INST]"}}) {
        storage::gguf_writer w(3, 64);
        for (const auto& [key, value] : model->metadata())
            if (!key.starts_with("qwen3moe.") && key != "general.architecture") w.set(key, value);
        w.set_string("tokenizer.chat_template", chat_template);
        write_bytes(dir / name, w.serialize());
    }
}

scheduler::profile tiny_profile(const scheduler::routing_shape& shape, const char* name, int tokens) {
    scheduler::routing_accumulator acc(shape);
    std::vector<float> probs(static_cast<std::size_t>(tokens) * shape.n_expert);
    std::vector<std::int32_t> chosen(static_cast<std::size_t>(tokens) * shape.n_expert_used);
    for (std::uint32_t l = 0; l < shape.n_layer; ++l) {
        for (int t = 0; t < tokens; ++t) {
            // Expert (t + l) % n_expert first, the next ones after it, by halving shares.
            float left = 1.0f;
            for (std::uint32_t k = 0; k < shape.n_expert; ++k) {
                const std::uint32_t e = (t + l + k) % shape.n_expert;
                const float p = k + 1 == shape.n_expert ? left : left / 2;
                probs[static_cast<std::size_t>(t) * shape.n_expert + e] = p;
                left -= p;
                if (k < shape.n_expert_used) chosen[static_cast<std::size_t>(t) * shape.n_expert_used + k] = static_cast<std::int32_t>(e);
            }
        }
        acc.add_layer(l, tokens, probs, chosen);
    }
    return scheduler::make_profile(name, "qwen3moe:0123456789abcdef", "tinymoe", "api: 2 prompts", 2, 1700000000, acc);
}

void make_profiles(const fs::path& dir) {
    write_bytes(dir / "two-layers.profile", scheduler::serialize_profile(tiny_profile({2, 4, 2}, "code", 3)));
    write_bytes(dir / "one-layer.profile", scheduler::serialize_profile(tiny_profile({1, 2, 1}, "a", 1)));
    write_bytes(dir / "four-layers.profile", scheduler::serialize_profile(tiny_profile({4, 8, 2}, "prose.v2", 5)));
}

void make_trace(const fs::path& path, const scheduler::trace_info& info, const std::vector<std::string>& tags,
                int sequences, int positions) {
    auto w = must(scheduler::trace_writer::create(path.string(), info), "creating " + path.string());
    for (const auto& t : tags) must(w.intern_tag(t), "tag");
    for (int s = 0; s < sequences; ++s) {
        for (int pos = 0; pos < positions; ++pos) {
            for (std::uint32_t l = 0; l < info.n_layer; ++l) {
                scheduler::trace_record r;
                r.seq = static_cast<std::uint64_t>(s);
                r.tag = tags.empty() ? 7u : static_cast<std::uint32_t>(s) % tags.size();
                r.pos = pos;
                r.token = 100 + pos;
                r.layer = l;
                r.prefill = pos + 1 < positions;
                r.probs.assign(info.n_expert, 0.0f);
                float left = 1.0f;
                for (std::uint32_t k = 0; k < info.n_expert; ++k) {
                    const std::uint32_t e = (pos + l + k) % info.n_expert;
                    const float p = k + 1 == info.n_expert || k >= 10 ? left : left / 2;
                    r.probs[e] = p;
                    left -= p;
                    if (k < info.n_expert_used) r.chosen.push_back(static_cast<std::int32_t>(e));
                    if (left == 0.0f) break;
                }
                r.lookahead.assign(static_cast<std::size_t>(info.lookahead_depth) * info.n_expert, 0.0f);
                for (std::uint32_t d = 0; d < info.lookahead_depth && l + d < info.n_layer; ++d)
                    r.lookahead[static_cast<std::size_t>(d) * info.n_expert + (l + d) % info.n_expert] = 1.0f;
                must(w.write(r), "record");
            }
        }
    }
    must(w.close(), "closing " + path.string());
}

void make_traces(const fs::path& dir) {
    scheduler::trace_info info;
    info.model_name = "tinymoe";
    info.model_id = "qwen3moe:0123456789abcdef";
    info.n_layer = 2;
    info.n_expert = 4;
    info.n_expert_used = 2;
    info.lookahead_depth = 1;
    info.expert_bytes = {4096, 4096};
    make_trace(dir / "tagged.trace", info, {"c/1", "py/2"}, 2, 3);
    info.lookahead_depth = 0;
    info.expert_bytes.clear();
    info.model_id.clear();
    make_trace(dir / "untagged.trace", info, {}, 1, 2);
    info.n_layer = 1;
    info.n_expert = 300;
    info.n_expert_used = 3;
    make_trace(dir / "wide.trace", info, {"x"}, 1, 2);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: moed-fuzz-seeds DIR (normally fuzz/corpus)\n");
        return 2;
    }
    const fs::path root = argv[1];
    for (const char* sub : {"gguf", "profile", "trace"}) fs::create_directories(root / sub);
    make_gguf(root / "gguf");
    make_profiles(root / "profile");
    make_traces(root / "trace");
    return 0;
}
