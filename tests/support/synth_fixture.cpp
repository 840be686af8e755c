#include "tests/support/synth_fixture.h"

#include <gtest/gtest.h>

#include <map>

#include "tests/support/test_paths.h"

namespace moed::test {

std::string synthetic_model(const std::string& type, const tools::synth_shape& shape) {
    static std::map<std::string, std::string> made;
    const std::string key = type + "/" + std::to_string(shape.layers) + "/" + std::to_string(shape.embd) + "/" +
                            std::to_string(shape.experts) + "/" + std::to_string(shape.vocab) + "/" +
                            std::to_string(shape.ff) + "/" + std::to_string(shape.heads);
    if (auto it = made.find(key); it != made.end()) return it->second;
    const std::string path = (temp_dir() / ("synth-" + std::to_string(made.size()) + "-" + type + ".gguf")).string();
    auto done = tools::synthesize_model(path, shape, type, 7);
    EXPECT_TRUE(done) << done.error().message;
    made[key] = path;
    return path;
}

void rewrite_gguf(const std::string& src, const std::string& dst,
                  const std::function<void(gguf_contents&)>& edit) {
    auto file = storage::gguf_file::open(src);
    ASSERT_TRUE(file) << file.error().message;
    gguf_contents c;
    c.kv = (*file)->metadata();
    for (const auto& t : (*file)->tensors()) {
        const std::byte* data = (*file)->tensor_data(t);
        c.tensors.push_back({t.name, t.type, std::vector<std::int64_t>(t.ne, t.ne + t.n_dims),
                             std::vector<std::byte>(data, data + t.size_bytes)});
    }
    edit(c);
    storage::gguf_writer w;
    for (auto& [k, v] : c.kv) {
        if (k == "general.alignment") continue;  // the writer sets its own
        w.set(k, v);
    }
    for (auto& t : c.tensors) w.add_tensor(t.name, t.type, t.ne, t.data);
    auto written = w.write(dst);
    ASSERT_TRUE(written) << written.error().message;
}

}  // namespace moed::test
