// llama-layer-dump: runs llama.cpp on a prompt and then on forced decode tokens, the way
// llama-server and llama-completion do (the prompt as one batch, one token per step after),
// and writes every F32 and I32 tensor of every graph it computes, for layer-parity
// (tools/layer_parity.cpp) to put moed's kernels beside them op by op. Not part of the build
// (it needs a llama.cpp build tree); compile it by hand against the llama.cpp build whose
// numbers you want, e.g. the AVX2 one:
//
//   L=/path/to/llama.cpp; B=$L/build-avx2; F="-I$L/include -I$L/ggml/include -L$B/bin -Wl,-rpath,$B/bin"
//   g++ -std=c++17 -O2 $F tools/llama_parity/layer_dump.cpp -lllama -lggml -lggml-base -o /tmp/llama-layer-dump
//   /tmp/llama-layer-dump MODEL.gguf OUT_DIR TOKENS_FILE [N_DECODE]
//   build/tools/layer-parity -m MODEL.gguf --dump OUT_DIR --isa avx2
//
// TOKENS_FILE: two lines of token ids, the prompt and the tokens to force after it (a
// golden case's prompt_tokens and tokens); N_DECODE (default 3) of the forced tokens are
// decoded. One thread, flash attention off, context 512, llama.cpp's other defaults (weight
// repacking, batch 2048 / ubatch 512), so the sums are the ones its goldens come from.
// OUT_DIR gets tokens.txt (the prompt and the forced tokens decoded), index.txt (one line per
// tensor: step, node, name, op, ne0..ne3), the tensors as s<step>_n<node>_<name>.bin (raw
// little-endian, contiguous) and s<step>_logits.bin. Step 0 is the prompt, step k the k-th
// forced token.
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

namespace {

struct dump_state {
    std::string dir;
    int step = 0;
    int node = 0;
    FILE* index = nullptr;
};

// Called for every node of the graph; with ask = true it only says "yes, show me".
bool on_tensor(ggml_tensor* t, bool ask, void* user) {
    if (ask) return true;
    auto* st = static_cast<dump_state*>(user);
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_I32) return true;
    std::string name = ggml_get_name(t);
    for (char& c : name) {
        if (c == '/' || c == ' ' || c == '(' || c == ')') c = '_';
    }
    const size_t n = static_cast<size_t>(ggml_nelements(t));
    std::vector<char> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    std::vector<char> flat(n * 4);
    size_t k = 0;
    for (int64_t i3 = 0; i3 < t->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < t->ne[2]; ++i2) {
            for (int64_t i1 = 0; i1 < t->ne[1]; ++i1) {
                for (int64_t i0 = 0; i0 < t->ne[0]; ++i0) {
                    std::memcpy(&flat[4 * k++], raw.data() + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3], 4);
                }
            }
        }
    }
    char path[1024];
    std::snprintf(path, sizeof path, "%s/s%02d_n%04d_%s.bin", st->dir.c_str(), st->step, st->node, name.c_str());
    FILE* f = std::fopen(path, "wb");
    if (f == nullptr) {
        std::fprintf(stderr, "llama-layer-dump: cannot write %s\n", path);
        std::exit(1);
    }
    std::fwrite(flat.data(), 1, flat.size(), f);
    std::fclose(f);
    std::fprintf(st->index, "%d %d %s %s %lld %lld %lld %lld\n", st->step, st->node++, name.c_str(), ggml_op_desc(t),
                 static_cast<long long>(t->ne[0]), static_cast<long long>(t->ne[1]), static_cast<long long>(t->ne[2]),
                 static_cast<long long>(t->ne[3]));
    return true;
}

std::vector<llama_token> parse_ids(const std::string& line) {
    std::vector<llama_token> out;
    std::istringstream in(line);
    long v;
    while (in >> v) out.push_back(static_cast<llama_token>(v));
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: llama-layer-dump MODEL.gguf OUT_DIR TOKENS_FILE [N_DECODE]\n");
        return 2;
    }
    dump_state st;
    st.dir = argv[2];
    ::mkdir(st.dir.c_str(), 0755);
    const int n_decode = argc > 4 ? std::atoi(argv[4]) : 3;
    std::ifstream in(argv[3]);
    std::string prompt_line, forced_line;
    std::getline(in, prompt_line);
    std::getline(in, forced_line);
    std::vector<llama_token> prompt = parse_ids(prompt_line);
    const std::vector<llama_token> forced = parse_ids(forced_line);
    if (prompt.empty()) {
        std::fprintf(stderr, "llama-layer-dump: no prompt ids in %s\n", argv[3]);
        return 2;
    }
    {
        FILE* t = std::fopen((st.dir + "/tokens.txt").c_str(), "w");
        if (t == nullptr) {
            std::fprintf(stderr, "llama-layer-dump: cannot write into %s\n", st.dir.c_str());
            return 1;
        }
        for (size_t i = 0; i < prompt.size(); ++i) std::fprintf(t, "%s%d", i ? " " : "", prompt[i]);
        std::fprintf(t, "\n");
        for (int i = 0; i < n_decode && i < static_cast<int>(forced.size()); ++i) std::fprintf(t, "%s%d", i ? " " : "", forced[static_cast<size_t>(i)]);
        std::fprintf(t, "\n");
        std::fclose(t);
    }
    st.index = std::fopen((st.dir + "/index.txt").c_str(), "w");
    if (st.index == nullptr) {
        std::fprintf(stderr, "llama-layer-dump: cannot write into %s\n", st.dir.c_str());
        return 1;
    }

    llama_backend_init();
    llama_model* model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (model == nullptr) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.cb_eval = on_tensor;
    cp.cb_eval_user_data = &st;
    cp.no_perf = true;
    llama_context* ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) return 1;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    auto write_logits = [&] {
        char path[1024];
        std::snprintf(path, sizeof path, "%s/s%02d_logits.bin", st.dir.c_str(), st.step);
        FILE* f = std::fopen(path, "wb");
        std::fwrite(llama_get_logits_ith(ctx, -1), sizeof(float), static_cast<size_t>(n_vocab), f);
        std::fclose(f);
    };
    if (llama_decode(ctx, llama_batch_get_one(prompt.data(), static_cast<int32_t>(prompt.size()))) != 0) return 1;
    write_logits();
    for (int i = 0; i < n_decode && i < static_cast<int>(forced.size()); ++i) {
        ++st.step;
        st.node = 0;
        llama_token t = forced[static_cast<size_t>(i)];
        if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) return 1;
        write_logits();
    }
    std::fclose(st.index);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
