// The identity of a model file, shared by routing traces and task profiles so that data
// recorded for one model is never applied to another: "<architecture>:<16 hex digits>",
// where the hex is a 64-bit FNV-1a hash over the file's metadata (every key, value type and
// value, in file order) and its tensor infos (name, type, dimensions, data offset).
// The same file always gives the same identity; a requantized, retrained or otherwise
// different model gives another (its metadata or tensor table differs). The tensor data
// itself is not hashed: reading gigabytes at start-up would cost more than it protects.
// Threads: a pure function of an immutable gguf_file; any thread.
#pragma once

#include <string>

#include "storage/gguf.h"

namespace moed::scheduler {

std::string model_identity(const storage::gguf_file& file);

}  // namespace moed::scheduler
