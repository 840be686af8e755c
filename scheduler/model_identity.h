// The identity of a model file, recorded in routing traces and task profiles so that data
// made for one model is never applied to another (the model identity the scheduler and the tiers share).
// "<architecture>:<16 hex digits>" (the architecture from general.architecture, at most 64
// characters of [A-Za-z0-9_.-], others replaced by '_'; "unknown" when absent): the hex is a 64-bit FNV-1a over the file's metadata
// (every key, value type and value, in file order; arrays element by element) and tensor
// infos (name, type, dimensions, data offset). It does not read tensor data, so it costs
// microseconds per megabyte of header and needs no I/O beyond the parsed header.
// The same file always gives the same identity; a requantized, retrained or edited model
// (any metadata value or tensor shape/type/offset changed) gives another. Two files with
// equal headers but different weights would collide; GGUF writers put the training run's
// metadata in the header, and the tensor offsets change with any size change, so this is
// accepted for a check that exists to catch mistakes, not attacks.
// Threads: a pure function of an immutable gguf_file.
#pragma once

#include <string>

#include "storage/gguf.h"

namespace moed::scheduler {

std::string model_identity(const storage::gguf_file& file);

}  // namespace moed::scheduler
