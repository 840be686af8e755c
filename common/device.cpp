#include "common/device.h"

#include <fmt/format.h>

namespace moed {

const char* device_kind_name(device_kind k) noexcept {
    switch (k) {
        case device_kind::host: return "host";
        case device_kind::cuda: return "cuda";
        case device_kind::sim: return "sim";
    }
    return "unknown";
}

const char* memory_kind_name(memory_kind k) noexcept {
    switch (k) {
        case memory_kind::host_pageable: return "host_pageable";
        case memory_kind::host_locked: return "host_locked";
        case memory_kind::device: return "device";
    }
    return "unknown";
}

std::string device_name(device_id d) {
    if (d.is_host()) return "host";
    return fmt::format("{}:{}", device_kind_name(d.kind), d.index);
}

}  // namespace moed
