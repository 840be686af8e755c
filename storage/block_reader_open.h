// open_block_reader with knobs that let tests walk the fallback paths on a machine where
// the preferred path works (this kernel may accept O_DIRECT on tmpfs; io_uring may be on).
// Production code calls open_block_reader() from block_reader.h.
#pragma once

#include <memory>

#include "common/result.h"
#include "storage/block_reader.h"

namespace moed::storage {

// The largest queue depth open_block_reader accepts (a named bound for the ring and the
// preallocated op tables; NVMe saturates far below it).
inline constexpr std::uint32_t max_queue_depth = 4096;

struct open_overrides {
    int direct_open_errno = 0;  // pretend open(O_DIRECT) failed with this errno (EINVAL: refused)
    int uring_init_errno = 0;   // pretend io_uring_queue_init failed with this errno (EPERM, ENOSYS)
};

result<std::unique_ptr<block_reader>> open_block_reader(const block_reader_options& options,
                                                        const open_overrides& overrides);

}  // namespace moed::storage
