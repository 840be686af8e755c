// Fuzzes the task profile file reader (scheduler/profile.cpp: read_profile, parse_profile)
// and what consumes a profile it accepts. Each input is read twice through a file in
// memory: as it is, and with its last 8 bytes replaced by the FNV-1a checksum of the rest,
// so the fuzzer gets past the checksum to every field behind it. A profile the reader
// accepts must: write back (serialize_profile) to exactly the bytes read; pass the model
// check against its own identity and shape; give hot sets, eviction scores and top-expert
// lists in range; and feed the profile matcher (scheduler/profile_matcher.cpp) with a
// prompt's routing statistics of its shape.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/log.h"
#include "fuzz/fuzz_support.h"
#include "scheduler/profile.h"
#include "scheduler/profile_matcher.h"
#include "scheduler/routing_stats.h"

namespace {

using namespace moed;

std::uint64_t fnv1a(std::span<const std::uint8_t> bytes) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (const std::uint8_t b : bytes) {
        h ^= b;
        h *= 0x100000001b3ull;
    }
    return h;
}

void check_profile(const scheduler::profile& p, std::span<const std::uint8_t> bytes) {
    const std::vector<std::byte> written = scheduler::serialize_profile(p);
    MOED_FUZZ_CHECK(written.size() == bytes.size() && std::memcmp(written.data(), bytes.data(), bytes.size()) == 0,
                    "the accepted profile writes back as {} different bytes (read {})", written.size(), bytes.size());
    const scheduler::routing_shape& shape = p.shape;
    auto fits = scheduler::check_profile_model(p, "fuzz", p.model_identity, shape);
    MOED_FUZZ_CHECK(fits.has_value(), "a profile does not fit its own model: {}", fits ? "" : fits.error().message);

    const std::size_t cells = static_cast<std::size_t>(shape.n_layer) * shape.n_expert;
    MOED_FUZZ_CHECK(p.score.size() == cells && p.selection.size() == cells, "tables of {} and {} for {} cells",
                    p.score.size(), p.selection.size(), cells);
    for (const std::uint32_t per_layer : {1u, shape.n_expert_used, shape.n_expert + 1}) {
        for (const ExpertId& id : scheduler::profile_hot_set(p, per_layer))
            MOED_FUZZ_CHECK(id.layer < shape.n_layer && id.expert < shape.n_expert, "hot set expert {}/{} out of range",
                            id.layer, id.expert);
    }
    const std::vector<float> scores = scheduler::profile_expert_scores(p);
    MOED_FUZZ_CHECK(scores.size() == cells, "{} eviction scores for {} cells", scores.size(), cells);
    for (const float s : scores) MOED_FUZZ_CHECK(std::isfinite(s) && s >= 0.0f && s <= 1.0f, "eviction score {}", s);
    for (std::uint32_t l = 0; l < shape.n_layer; ++l) {
        for (const std::uint32_t e : p.top_experts(l, 2 * shape.n_expert_used))
            MOED_FUZZ_CHECK(e < shape.n_expert, "top expert {} of layer {} out of range", e, l);
    }

    // One prompt token routed to the first n_expert_used experts of every layer, uniformly.
    scheduler::routing_accumulator prompt(shape);
    std::vector<float> probs(shape.n_expert, 1.0f / static_cast<float>(shape.n_expert));
    std::vector<std::int32_t> chosen(shape.n_expert_used);
    for (std::uint32_t i = 0; i < shape.n_expert_used; ++i) chosen[i] = static_cast<std::int32_t>(i);
    for (std::uint32_t l = 0; l < shape.n_layer; ++l) prompt.add_layer(l, 1, probs, chosen);
    auto shared = std::make_shared<const scheduler::profile>(p);
    const scheduler::profile_matcher matcher({shared, shared});
    for (const auto& m : {matcher.match(prompt), matcher.match_cosine(prompt)}) {
        MOED_FUZZ_CHECK(std::isfinite(m.similarity) && std::isfinite(m.log_likelihood),
                        "match gave similarity {} and log-likelihood {}", m.similarity, m.log_likelihood);
        MOED_FUZZ_CHECK(m.candidate == p.name, "the only profile '{}' is not the candidate '{}'", p.name, m.candidate);
    }
}

void read_and_check(fuzz::memory_file& file, std::span<const std::uint8_t> bytes) {
    file.assign(bytes);
    auto p = scheduler::read_profile(file.path());
    if (!p) {
        MOED_FUZZ_CHECK(!p.error().message.empty(), "an error without a message");
        return;
    }
    check_profile(*p, bytes);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static moed::fuzz::memory_file file("profile-fuzz");
    const std::span<const std::uint8_t> bytes(data, size);
    read_and_check(file, bytes);
    if (size >= 8) {
        std::vector<std::uint8_t> fixed(bytes.begin(), bytes.end());
        const std::uint64_t sum = fnv1a(bytes.first(size - 8));
        for (int i = 0; i < 8; ++i) fixed[size - 8 + i] = static_cast<std::uint8_t>(sum >> (8 * i));
        read_and_check(file, fixed);
    }
    return 0;
}
