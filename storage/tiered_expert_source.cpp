// The tiered expert source's public side: create (sizing, slab, reader, checks), acquire
// and statistics. The completion thread is in tiered_loads.cpp, the control interface in
// tiered_control.cpp; tiered_state.h says how the shell and the tier core compose.
#include "storage/tiered_expert_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <system_error>

#include "common/log.h"
#include "common/units.h"
#include "storage/tiered_state.h"

namespace moed::storage {

using namespace tiered_detail;

// --- tiered_expert_source ---

tiered_expert_source::tiered_expert_source(std::unique_ptr<impl> p) : impl_(std::move(p)) { impl_->owner = this; }

tiered_expert_source::~tiered_expert_source() = default;

result<std::unique_ptr<tiered_expert_source>> tiered_expert_source::create(
    const std::string& path, const expert_layout& layout, const tiered_options& options,
    std::unique_ptr<block_reader> supplied_reader) {
    if (layout.n_layer == 0 || layout.n_expert == 0 || layout.layers.size() != layout.n_layer) {
        return make_error(errc::invalid_argument, "{}: expert layout has {} layers x {} experts ({} described)",
                          path, layout.n_layer, layout.n_expert, layout.layers.size());
    }
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        const auto& lt = layout.layers[l];
        if (lt.n_embd <= 0 || lt.n_ff <= 0 || lt.gate_bytes == 0 || lt.up_bytes == 0 || lt.down_bytes == 0) {
            return make_error(errc::bad_file, "{}: layer {} has empty experts (n_embd {}, n_ff {})", path, l,
                              lt.n_embd, lt.n_ff);
        }
    }
    if (options.queue_depth == 0) {
        return make_error(errc::invalid_argument, "{}: queue depth must be at least 1", path);
    }
    const std::uint32_t min_slots = std::max<std::uint32_t>(options.min_slots, 1);

    std::unique_ptr<host_slab> slab;
    // Declared after the slab so that on every return the reader, which may have registered
    // the slab with the kernel, goes first.
    const bool reader_opened_here = supplied_reader == nullptr;
    std::unique_ptr<block_reader> reader = std::move(supplied_reader);
    std::uint32_t alignment = min_region_alignment;
    if (reader) alignment = std::max(alignment, reader->alignment());
    slot_classes classes;
    // The slab must exist before the reader opens (io_uring registers it), but the region
    // alignment depends on the reader; a device wanting more than a page is met by one retry.
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (!is_power_of_two(alignment)) {
            return make_error(errc::internal, "{}: the block reader's alignment {} is not a power of two", path,
                              alignment);
        }
        auto planned = tiered_slot_classes(layout, alignment, options.host_budget_bytes, min_slots);
        if (!planned) return make_error(planned.error().code, "{}: {}", path, planned.error().message);
        classes = std::move(planned).value();
        host_slab_options slab_options{.alignment = alignment, .lock = options.lock, .numa_node = options.numa_node};
        slab_options.classes = classes;
        auto made = host_slab::create(slab_options);
        if (!made) return unexpected(std::move(made).error());
        slab = std::move(made).value();
        if (!reader) {
            auto opened = open_block_reader(block_reader_options{path, options.queue_depth, options.allow_uring,
                                                                 options.allow_direct, slab->region()});
            if (!opened) return unexpected(std::move(opened).error());
            reader = std::move(opened).value();
            if (options.wrap_reader) {
                auto wrapped = options.wrap_reader(std::move(reader));
                if (!wrapped) return unexpected(std::move(wrapped).error());
                reader = std::move(wrapped).value();
                if (!reader) return make_error(errc::internal, "{}: the reader wrapper returned no reader", path);
            }
        }
        if (alignment % reader->alignment() == 0) break;
        if (attempt == 1) {
            return make_error(errc::unsupported, "{}: the block reader wants alignment {}, above {}", path,
                              reader->alignment(), alignment);
        }
        alignment = reader->alignment();
        reader.reset();
        slab.reset();
    }

    auto identity = reader->identity();
    if (!identity) return unexpected(std::move(identity).error());
    // Every expert must lie inside the file as it is now; lengths from the header are untrusted.
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        const auto ms = matrices_of(layout.layers[l]);
        for (std::size_t m = 0; m < 3; ++m) {
            const std::uint64_t size = identity->size_bytes;
            if (ms[m].offset > size || ms[m].bytes > (size - ms[m].offset) / layout.n_expert) {
                return make_error(errc::bad_file,
                                  "{}: layer {} {} experts ({} x {} bytes at offset {}) run past the end of the "
                                  "file ({} bytes)",
                                  path, l, matrix_names[m], layout.n_expert, ms[m].bytes, ms[m].offset, size);
            }
        }
    }

    auto p = std::make_unique<impl>();
    p->path = path;
    p->layout = layout;
    p->options = options;
    p->region_alignment = alignment;
    p->identity = *identity;
    p->reader_opened_here = reader_opened_here;
    {
        // The fingerprint a changed file is compared with before the tier trusts it again.
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return make_error(errc::io, "{}: cannot open: {}", path, std::strerror(errno));
        auto print = p->fingerprint(fd);
        ::close(fd);
        if (!print) return make_error(errc::io, "{}: reading its fingerprint: {}", path, print.error().message);
        p->header_digest = print->first;
        p->tensor_digests = std::move(print->second);
    }
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) p->geometry.push_back(geometry_of(layout, l, alignment));
    const std::uint32_t n_slots = slab->n_slots();
    const io_mode mode = reader->mode();
    const std::uint32_t depth = reader->queue_depth();
    p->mover = std::make_unique<block_mover>(
        std::move(reader), slot_memory{slab->slot(0), classes}, layout, *identity,
        block_mover_options{.path = path, .eio_retries = options.eio_retries, .region_alignment = alignment});
    p->slab = std::move(slab);
    p->core.reset(layout, options, classes, p->mover.get());
    try {
        impl* raw = p.get();
        p->completion_thread = std::thread([raw] { raw->completion_main(); });
        if (options.file_check_interval.count() > 0) p->check_thread = std::thread([raw] { raw->check_main(); });
    } catch (const std::system_error& ex) {
        return make_error(errc::internal, "{}: cannot start the tier's threads: {}", path, ex.what());
    }
    std::string runs;
    for (const slot_class& c : classes.classes()) {
        runs += fmt::format("{}{} x {} ({} layer{})", runs.empty() ? "" : " + ", c.n_slots, format_bytes(c.slot_bytes),
                            c.n_layer, c.n_layer == 1 ? "" : "s");
    }
    MOED_LOG_INFO(component,
                  "{}: host tier of {} slots, {} ({}), {} reads, queue depth {}; ring of {} sections ({} slots per "
                  "layer wanted), at most {} in flight",
                  path, n_slots, runs, format_bytes(classes.bytes()), io_mode_name(mode), depth,
                  p->core.ring().n_sections(), p->core.ring().slots_per_layer(),
                  options.max_inflight_bytes == 0 ? std::string("unbounded") : format_bytes(options.max_inflight_bytes));
    return std::unique_ptr<tiered_expert_source>(new tiered_expert_source(std::move(p)));
}

namespace {

// Experts live in host slots; the tier places nothing on another device.
result<void> check_device(const std::string& path, std::span<const ExpertId> ids, device_id device) {
    if (device.is_host() || ids.empty()) return {};
    return make_error(errc::unsupported, "{}: expert {}/{} wanted on {}, but this tier keeps experts in host memory",
                      path, ids.front().layer, ids.front().expert, device_name(device));
}

}  // namespace

result<std::unique_ptr<expert_source>> create_tiered_source(const std::string& path, const expert_layout& layout,
                                                            const tiered_options& options) {
    auto made = tiered_expert_source::create(path, layout, options);
    if (!made) return unexpected(std::move(made).error());
    return std::unique_ptr<expert_source>(std::move(made).value());
}

result<expert_handle> tiered_expert_source::acquire(ExpertId id, device_id device) {
    MOED_TRY(check_device(impl_->path, std::span<const ExpertId>(&id, 1), device));
    expert_handle handle;
    MOED_TRY(impl_->acquire_into(std::span<const ExpertId>(&id, 1), std::span<expert_handle>(&handle, 1)));
    return handle;
}

result<void> tiered_expert_source::acquire_many(std::span<const ExpertId> ids, device_id device,
                                                std::vector<expert_handle>& handles) {
    handles.clear();
    MOED_TRY(check_device(impl_->path, ids, device));
    handles.resize(ids.size());  // a reused vector keeps its capacity: no allocation per layer
    auto r = impl_->acquire_into(ids, handles);
    if (!r) handles.clear();
    return r;
}

result<void> tiered_expert_source::acquire_each(std::span<const ExpertId> ids, device_id device,
                                                std::vector<expert_handle>& handles, const apply_fn& apply) {
    impl& d = *impl_;
    handles.clear();
    MOED_TRY(check_device(d.path, ids, device));
    handles.resize(ids.size());
    if (auto r = d.acquire_into(ids, handles, false); !r) {
        handles.clear();
        return r;
    }
    // Each handle is released right after its expert was applied: !valid() marks it done,
    // and its slot is free for others at once.
    std::size_t left = ids.size();
    while (left > 0) {
        std::size_t pick = 0;
        {
            std::unique_lock lock(d.mutex);
            std::uint64_t waited_ns = 0;
            for (;;) {
                bool found = false;
                for (std::size_t i = 0; i < handles.size() && !found; ++i) {
                    if (!handles[i].valid()) continue;
                    const slot_entry& e = d.core.slots()[d.slot_of(handles[i])];
                    if (e.state == slot_state::failed) {
                        moed::error copy = e.failure;
                        lock.unlock();
                        for (expert_handle& h : handles) h.release();
                        handles.clear();
                        return unexpected(std::move(copy));
                    }
                    if (e.state != slot_state::loading) {
                        pick = i;
                        found = true;
                    }
                }
                if (found) break;
                // Nothing ready: wait for the next load to end (every completion wakes us).
                const auto t0 = clock_type::now();
                d.load_cv.wait(lock);
                waited_ns += static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count());
            }
            d.core.counters().add_io_wait(waited_ns);
        }
        apply(pick, handles[pick]);
        handles[pick].release();
        --left;
    }
    handles.clear();
    return {};
}

bool tiered_expert_source::impl::wait_loaded(std::unique_lock<counted_mutex>& lock, std::uint32_t slot,
                                             std::uint64_t& waited_ns, moed::error& failure) {
    const slot_table& slots = core.slots();
    if (slots[slot].state == slot_state::loading) {
        const auto t0 = clock_type::now();
        load_cv.wait(lock, [&] { return slots[slot].state != slot_state::loading; });
        waited_ns += static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count());
    }
    if (slots[slot].state != slot_state::failed) return true;
    failure = slots[slot].failure;
    return false;
}

result<void> tiered_expert_source::impl::acquire_into(std::span<const ExpertId> ids, std::span<expert_handle> out,
                                                      bool wait) {
    MOED_ASSERT(out.size() == ids.size());
    for (const ExpertId& id : ids) {
        if (!in_range(id)) {
            return make_error(errc::invalid_argument, "{}: expert {}/{} out of range ({} layers x {} experts)", path,
                              id.layer, id.expert, layout.n_layer, layout.n_expert);
        }
    }
    if (ids.size() > core.classes().n_slots_min()) {
        // More distinct experts of a class than its slots can never be held at once: waiting
        // would hang.
        std::vector<ExpertId> distinct(ids.begin(), ids.end());
        std::sort(distinct.begin(), distinct.end(), [](ExpertId a, ExpertId b) {
            return a.layer != b.layer ? a.layer < b.layer : a.expert < b.expert;
        });
        distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
        const slot_classes& classes = core.classes();
        std::vector<std::uint32_t> per_class(classes.n_classes(), 0);
        for (const ExpertId& id : distinct) ++per_class[classes.class_of_layer(id.layer)];
        for (std::uint32_t c = 0; c < classes.n_classes(); ++c) {
            if (per_class[c] <= classes[c].n_slots) continue;
            const std::string which =
                classes.n_classes() == 1
                    ? std::string()
                    : fmt::format(" of the slot class of {} ({} layers' experts)", format_bytes(classes[c].slot_bytes),
                                  classes[c].n_layer);
            return make_error(errc::invalid_argument,
                              "{}: cannot hold {} experts at once in {} host slots{}; acquire at most "
                              "max_held_experts() at a time",
                              path, per_class[c], classes[c].n_slots, which);
        }
    }

    std::unique_lock lock(mutex);
    // The engine computes the layer it acquires for: its experts are guarded from prefetches.
    if (!ids.empty()) core.set_current_layer(ids.front().layer);
    // Time spent waiting for reads or slots: what compute lost to I/O.
    std::uint64_t waited_ns = 0;
    auto timed_wait = [&](auto&& block) {
        const auto t0 = clock_type::now();
        block();
        waited_ns += static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count());
    };
    auto handle_for = [&](std::size_t k, std::uint32_t where) {
        out[k] = expert_handle(owner, ids[k], weights_of(where, ids[k]), where, device_id::host(), memory());
    };
    // Pass 1 pins what is resident or loading, so pass 2 cannot pick one of this call's own
    // experts as the victim for another; pass 2 finds slots for the rest.
    for (std::size_t k = 0; k < ids.size(); ++k) {
        if (const std::uint32_t where = core.pin_present(ids[k]); where != slot_table::no_slot) handle_for(k, where);
    }
    for (std::size_t k = 0; k < ids.size();) {
        if (out[k].valid()) {
            ++k;
            continue;
        }
        const ExpertId id = ids[k];
        // A duplicate id, or loaded by another caller meanwhile.
        if (const std::uint32_t where = core.pin_present(id); where != slot_table::no_slot) {
            handle_for(k, where);
            ++k;
            continue;
        }
        if (file_broken) {
            // The file may hold other bytes now: fail what would need a read, keep the rest.
            moed::error failure = error_noexcept(errc::io, "{}; expert {}/{} is not in host memory",
                                                 file_error.message, id.layer, id.expert);
            const bool submit = core.take_submit();
            lock.unlock();
            if (submit) mover->submit();
            for (expert_handle& h : out) h.release();
            return unexpected(std::move(failure));
        }
        const std::uint32_t slot = core.start_demand(id);
        if (slot == slot_table::no_slot) {
            // Every slot is loading or held. Send what is queued so those loads can finish
            // (without the lock, which lets releases in), then look at `id` again; else wait
            // for a release or a finished load (another caller may load `id` meanwhile).
            if (core.take_submit()) {
                lock.unlock();
                mover->submit();
                lock.lock();
                continue;
            }
            std::cv_status waited = std::cv_status::no_timeout;
            timed_wait([&] { waited = slot_cv.wait_for(lock, slot_wait_warn); });
            if (waited == std::cv_status::timeout) {
                MOED_LOG_WARN(component,
                              "{}: waited {} s for a free host slot for expert {}/{}: all {} slots are held or "
                              "loading (do callers together hold more than max_held_experts()?)",
                              path, slot_wait_warn.count(), id.layer, id.expert, n_slots());
            }
            continue;
        }
        handle_for(k, slot);
        ++k;
    }
    // One batch for every read of the call, sent without the lock; then wait only for this
    // call's experts.
    submit_unlocked_if_due(lock);
    // The current layer's reads are on their way: prefetches held behind them may go.
    if (!ids.empty()) {
        core.demand_requested(ids.front().layer);
        submit_unlocked_if_due(lock);
    }

    if (!wait) {
        core.counters().add_io_wait(waited_ns);
        return {};
    }
    moed::error failure;
    bool failed = false;
    for (const expert_handle& h : out) {
        if (!wait_loaded(lock, slot_of(h), waited_ns, failure)) {
            failed = true;
            break;
        }
    }
    core.counters().add_io_wait(waited_ns);
    if (failed) {
        // The failed slot stays failed (not reused) while this call holds its ref, so the
        // error was copied before the handles go; they are released without the lock.
        lock.unlock();
        for (expert_handle& h : out) h.release();
        return unexpected(std::move(failure));
    }
    return {};
}

std::uint32_t tiered_expert_source::slot_count() const noexcept { return impl_->n_slots(); }

std::uint32_t tiered_expert_source::max_held_experts() const noexcept { return impl_->core.classes().n_slots_min(); }

std::uint64_t tiered_expert_source::slot_bytes() const noexcept { return impl_->slab->slot_bytes(); }

const slot_classes& tiered_expert_source::classes() const noexcept { return impl_->core.classes(); }

expert_cache_stats tiered_expert_source::stats() const {
    const impl& d = *impl_;
    expert_cache_stats out;
    out.io_mode = std::string(io_mode_name(d.mover->mode()));
    out.queue_depth = d.mover->queue_depth();
    std::vector<std::uint32_t> samples;
    {
        std::lock_guard lock(d.mutex);
        d.core.fill(out, samples);
        out.host.lock = d.mutex.stats();
    }
    tier_stats& h = out.host;
    prefetch_stats& pf = out.prefetch;
    tier_counters::summarize(h, pf, samples);

    tier_stats& n = out.nvme;
    n.name = "nvme";
    n.capacity_bytes = out.expert_bytes_total;
    n.capacity_experts = static_cast<std::uint64_t>(d.layout.n_layer) * d.layout.n_expert;
    n.resident_bytes = n.capacity_bytes;  // the model file always holds every expert
    n.resident_experts = n.capacity_experts;
    n.hits = h.misses;  // every host miss is served from the file
    return out;
}

}  // namespace moed::storage
