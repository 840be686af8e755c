// Fuzzes the GGUF reader (storage/gguf_reader.cpp) and what moed reads from a model file
// after it: the fuzzer's bytes become a file in memory, opened by path, so the reader's real
// open, fstat and mmap path runs. A file the reader accepts must keep its promises: every
// tensor's data inside the file and the mapping, every value readable through its typed
// getters. Then the consumers of a parsed header run on it: the tokenizer loader, the chat
// template detection, the model identity and the model loader (hyper-parameters, tensor
// shapes and types). Any of them may refuse the file; none may crash.
#include <cstddef>
#include <cstdint>

#include "common/log.h"
#include "engine/chat_template.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "fuzz/fuzz_support.h"
#include "scheduler/model_identity.h"
#include "storage/gguf.h"

namespace {

using namespace moed;

// Reads every value through every typed getter, as the loaders do (each may refuse).
void read_value(const storage::gguf_value& v, std::string_view key, int depth) {
    ignore_error(v.as_uint(key));
    ignore_error(v.as_int(key));
    ignore_error(v.as_float(key));
    ignore_error(v.as_bool(key));
    ignore_error(v.as_string(key));
    if (auto array = v.as_array(key); array && depth < 16) {
        for (const auto& element : (*array)->values) {
            MOED_FUZZ_CHECK(element.type == (*array)->element_type, "key '{}': an element's type differs from the array's",
                            key);
            read_value(element, key, depth + 1);
        }
    }
}

void check_opened(const storage::gguf_file& file) {
    const std::span<const std::byte> mapping = file.mapping();
    MOED_FUZZ_CHECK(mapping.size() == file.file_size(), "mapping of {} bytes for a file of {}", mapping.size(),
                    file.file_size());
    MOED_FUZZ_CHECK(file.data_offset() % file.alignment() == 0, "data offset {} not aligned to {}", file.data_offset(),
                    file.alignment());
    for (const auto& [key, value] : file.metadata()) {
        MOED_FUZZ_CHECK(file.find(key) == &value, "find('{}') does not give the key's value", key);
        read_value(value, key, 0);
    }
    volatile std::byte sink{};
    for (const auto& t : file.tensors()) {
        MOED_FUZZ_CHECK(file.find_tensor(t.name) == &t, "find_tensor('{}') does not give the tensor", t.name);
        MOED_FUZZ_CHECK(t.size_bytes > 0 && t.offset >= file.data_offset() && t.offset <= file.file_size() &&
                            t.size_bytes <= file.file_size() - t.offset,
                        "tensor '{}' [{}, +{}) is not inside the file of {} bytes", t.name, t.offset, t.size_bytes,
                        file.file_size());
        // Touch the first and last byte: outside the mapping this faults.
        const std::byte* data = file.tensor_data(t);
        sink = data[0];
        sink = data[t.size_bytes - 1];
    }
    (void)sink;

    ignore_error(engine::tokenizer::from_gguf(file));
    ignore_error(engine::chat_template::from_gguf(file));
    const std::string identity = scheduler::model_identity(file);
    MOED_FUZZ_CHECK(!identity.empty(), "empty model identity");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static moed::fuzz::memory_file file("gguf-fuzz");
    file.assign({data, size});
    auto opened = moed::storage::gguf_file::open(file.path());
    if (!opened) {
        MOED_FUZZ_CHECK(!opened.error().message.empty(), "an error without a message");
        return 0;
    }
    check_opened(**opened);
    // The model loader opens the file again itself (its own mapping).
    if (auto model = moed::engine::model::load(file.path()); model) {
        const auto& hp = (*model)->hparams();
        MOED_FUZZ_CHECK(hp.n_layer >= 1 && hp.n_expert_used >= 1 && hp.n_expert_used <= hp.n_expert,
                        "model loaded with n_layer {} and {} of {} experts", hp.n_layer, hp.n_expert_used, hp.n_expert);
    }
    return 0;
}
