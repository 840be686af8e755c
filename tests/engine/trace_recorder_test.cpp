// Checks engine::trace_recorder on a small synthetic model, against what the evaluator's own
// routing observer sees:
// - each record equals the event's row for its token (probs after f16 rounding, chosen,
//   the first `depth` lookahead rows when the evaluator runs a deeper lookahead);
// - seq, pos and token come from the batch; tag and prefill from begin_sequence, and for
//   an undeclared sequence tag 0 and "prefill when several of its tokens are in the batch";
// - attach() raises the evaluator's lookahead depth but keeps a deeper one;
// - a writer that fails (closed) stops the recording with an error, the model keeps running.
#include <map>
#include <tuple>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "engine/trace_recorder.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/thread_pool.h"
#include "scheduler/trace.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

tools::synth_shape three_layers() {
    tools::synth_shape s;
    s.layers = 3;
    return s;
}

float f16_round(float v) { return kernels::fp16_to_fp32(kernels::fp32_to_fp16(v)); }

struct expected_row {
    std::vector<float> probs;
    std::vector<std::int32_t> chosen;
    std::vector<float> lookahead;  // first trace-depth rows
};

TEST(trace_recorder, records_match_the_events) {
    auto loaded = model::load(test::synthetic_model("Q8_0", three_layers()));
    ASSERT_TRUE(loaded) << loaded.error().message;
    model& m = **loaded;
    const auto& hp = m.hparams();
    const std::size_t n_exp = hp.n_expert, k = hp.n_expert_used;
    const std::string path = (test::temp_dir() / "recorder.trace").string();

    kernels::compute_pool pool(2);
    evaluator eval(m, pool, 16);
    eval.set_lookahead_depth(3);  // deeper than the trace's 1: kept
    auto writer = scheduler::trace_writer::create(path, make_trace_info(m, 1));
    ASSERT_TRUE(writer) << writer.error().message;
    EXPECT_EQ(writer->info().model_id.substr(0, 9), "qwen3moe:");
    trace_recorder recorder(*writer);
    recorder.attach(eval);
    EXPECT_EQ(eval.lookahead_depth(), 3);

    // What the evaluator reports, keyed like the records.
    std::map<std::tuple<std::uint64_t, std::int64_t, std::uint32_t>, expected_row> want;
    eval.add_routing_observer([&](const routing_event& ev) {
        for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
            expected_row row;
            row.probs.assign(ev.probs.begin() + t * n_exp, ev.probs.begin() + (t + 1) * n_exp);
            row.chosen.assign(ev.chosen.begin() + t * k, ev.chosen.begin() + (t + 1) * k);
            row.lookahead.assign(ev.lookahead.begin() + t * n_exp, ev.lookahead.begin() + (t + 1) * n_exp);
            want[{ev.tokens[t].seq, ev.tokens[t].pos, ev.layer}] = row;
        }
    });

    kv_cache ca(hp.n_layer, 32, hp.n_head_kv, hp.head_dim), cb(hp.n_layer, 32, hp.n_head_kv, hp.head_dim),
        cc(hp.n_layer, 32, hp.n_head_kv, hp.head_dim);
    auto tag = writer->intern_tag("declared");
    ASSERT_TRUE(tag);
    recorder.begin_sequence(5, *tag, 2);  // positions 0 and 1 are its prompt
    // One batch: seq 5 (declared, positions 0..2: two prompt tokens and one past it), seq 6
    // (undeclared, 3 tokens: prefill), seq 7 (undeclared, 1 token: decode).
    std::vector<batch_token> batch{{11, 0, &ca, false, 5}, {12, 1, &ca, false, 5}, {13, 2, &ca, true, 5},
                                   {21, 0, &cb, false, 6}, {22, 1, &cb, false, 6}, {23, 2, &cb, true, 6},
                                   {31, 0, &cc, true, 7}};
    std::vector<float> logits(3 * hp.n_vocab);
    ASSERT_TRUE(eval.run(batch, logits.data()));
    recorder.end_sequence(5);
    // Forgotten: the next token of seq 5 is an undeclared single token (decode, tag 0).
    std::vector<batch_token> next{{14, 3, &ca, true, 5}};
    ASSERT_TRUE(eval.run(next, logits.data()));
    ASSERT_TRUE(recorder.status());
    EXPECT_EQ(recorder.records(), 8u * hp.n_layer);
    ASSERT_TRUE(writer->close());

    scheduler::trace_info info;
    auto records = scheduler::read_trace(path, info);
    ASSERT_TRUE(records) << records.error().message;
    ASSERT_EQ(records->size(), 8u * hp.n_layer);
    for (const auto& r : *records) {
        auto it = want.find({r.seq, r.pos, r.layer});
        ASSERT_NE(it, want.end()) << "seq " << r.seq << " pos " << r.pos;
        const expected_row& w = it->second;
        EXPECT_EQ(r.chosen, w.chosen);
        for (std::size_t e = 0; e < n_exp; ++e) {
            EXPECT_EQ(r.probs[e], f16_round(w.probs[e]));
            EXPECT_EQ(r.lookahead[e], f16_round(w.lookahead[e]));
        }
        const batch_token* bt = nullptr;
        for (const auto& b : batch) {
            if (b.seq == r.seq && b.pos == r.pos) bt = &b;
        }
        if (r.seq == 5 && r.pos == 3) {
            EXPECT_EQ(r.token, 14);
            EXPECT_EQ(r.tag, 0u);
            EXPECT_FALSE(r.prefill);
            continue;
        }
        ASSERT_NE(bt, nullptr);
        EXPECT_EQ(r.token, bt->token);
        if (r.seq == 5) {
            EXPECT_EQ(r.tag, *tag);
            EXPECT_EQ(r.prefill, r.pos < 2);
        } else {
            EXPECT_EQ(r.tag, 0u);
            EXPECT_EQ(r.prefill, r.seq == 6);
        }
    }
    // Layer-major within a batch: the first 7 records are layer 0 in batch order.
    for (std::size_t i = 0; i < batch.size(); ++i) {
        EXPECT_EQ((*records)[i].layer, 0u);
        EXPECT_EQ((*records)[i].seq, batch[i].seq);
        EXPECT_EQ((*records)[i].pos, batch[i].pos);
    }
}

TEST(trace_recorder, a_failing_writer_stops_recording_not_the_model) {
    auto loaded = model::load(test::synthetic_model("Q8_0", three_layers()));
    ASSERT_TRUE(loaded);
    model& m = **loaded;
    const auto& hp = m.hparams();
    kernels::compute_pool pool(1);
    evaluator eval(m, pool, 4);
    auto writer = scheduler::trace_writer::create((test::temp_dir() / "closed.trace").string(), make_trace_info(m, 2));
    ASSERT_TRUE(writer);
    trace_recorder recorder(*writer);
    recorder.attach(eval);
    EXPECT_EQ(eval.lookahead_depth(), 2);
    ASSERT_TRUE(writer->close());
    kv_cache cache(hp.n_layer, 16, hp.n_head_kv, hp.head_dim);
    std::vector<float> logits;
    const std::vector<token_id> prompt{1, 2, 3};
    ASSERT_TRUE(eval.run_sequence(prompt, cache, logits));
    auto st = recorder.status();
    ASSERT_FALSE(st);
    EXPECT_NE(st.error().message.find("closed"), std::string::npos) << st.error().message;

    // Lowering the evaluator's depth below the trace's is reported, not written wrongly.
    auto writer2 = scheduler::trace_writer::create((test::temp_dir() / "shallow.trace").string(), make_trace_info(m, 2));
    ASSERT_TRUE(writer2);
    evaluator eval2(m, pool, 4);
    trace_recorder recorder2(*writer2);
    recorder2.attach(eval2);
    eval2.set_lookahead_depth(1);
    kv_cache cache2(hp.n_layer, 16, hp.n_head_kv, hp.head_dim);
    ASSERT_TRUE(eval2.run_sequence(prompt, cache2, logits));
    ASSERT_FALSE(recorder2.status());
    EXPECT_EQ(recorder2.records(), 0u);
}

}  // namespace
}  // namespace moed::engine
