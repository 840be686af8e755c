// Checks the routing trace file format (scheduler/trace.h):
// - records written and read back are equal (probabilities after their f16 rounding), with
//   1-byte and 2-byte expert ids, enough records to pass through both buffers several
//   times, and the tag table;
// - a trace cut short at every byte is refused with an error naming the file and a byte
//   offset; trailing bytes are refused too;
// - corrupted header fields, footer fields and record contents are refused with errors
//   naming the field; flipping any single byte of a small trace never crashes the reader;
// - records of the wrong sizes are refused by the writer, and a trace for another model's
//   sizes or identity by check_trace_matches.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "kernels/cpu/fp16.h"
#include "scheduler/trace.h"
#include "tests/support/test_paths.h"

namespace moed::scheduler {
namespace {

std::string temp_path(const std::string& name) { return (test::temp_dir() / name).string(); }

trace_info make_info(std::uint32_t n_layer, std::uint32_t n_expert, std::uint32_t k, std::uint32_t depth) {
    trace_info info;
    info.model_name = "test-model";
    info.model_id = "qwen3moe:0123456789abcdef";
    info.n_layer = n_layer;
    info.n_expert = n_expert;
    info.n_expert_used = k;
    info.lookahead_depth = depth;
    for (std::uint32_t l = 0; l < n_layer; ++l) info.expert_bytes.push_back(1000 + l);
    return info;
}

// A plausible record: softmax probabilities, the top-k experts, lookahead rows.
trace_record make_record(const trace_info& info, std::mt19937& rng, std::uint64_t i) {
    std::uniform_real_distribution<float> u(-3.0f, 3.0f);
    trace_record r;
    r.seq = 1000 + i / 50;
    r.tag = static_cast<std::uint32_t>(i % 3);
    r.pos = static_cast<std::int64_t>(i % 50);
    r.token = static_cast<std::int32_t>(i * 37 % 4096);
    r.layer = static_cast<std::uint32_t>(i % info.n_layer);
    r.prefill = (i % 5) != 0;
    auto softmax_row = [&](std::vector<float>& v, std::size_t at) {
        float sum = 0.0f;
        for (std::uint32_t e = 0; e < info.n_expert; ++e) sum += (v[at + e] = std::exp(u(rng)));
        for (std::uint32_t e = 0; e < info.n_expert; ++e) v[at + e] /= sum;
    };
    r.probs.resize(info.n_expert);
    softmax_row(r.probs, 0);
    std::vector<std::int32_t> order(info.n_expert);
    for (std::uint32_t e = 0; e < info.n_expert; ++e) order[e] = static_cast<std::int32_t>(e);
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return r.probs[a] > r.probs[b]; });
    r.chosen.assign(order.begin(), order.begin() + info.n_expert_used);
    r.lookahead.assign(static_cast<std::size_t>(info.lookahead_depth) * info.n_expert, 0.0f);
    for (std::uint32_t j = 0; j < info.lookahead_depth; ++j) {
        if (r.layer + j < info.n_layer) softmax_row(r.lookahead, j * info.n_expert);
    }
    return r;
}

float f16_round(float v) { return kernels::fp16_to_fp32(kernels::fp32_to_fp16(v)); }

std::vector<trace_record> write_trace(const std::string& path, const trace_info& info, std::uint64_t n,
                                      bool with_tags = true) {
    auto w = trace_writer::create(path, info);
    EXPECT_TRUE(w) << w.error().message;
    if (!w) return {};
    if (with_tags) {
        EXPECT_EQ(*w->intern_tag("c/17"), 0u);
        EXPECT_EQ(*w->intern_tag("python/3"), 1u);
        EXPECT_EQ(*w->intern_tag("c/17"), 0u);
        EXPECT_EQ(*w->intern_tag("prose/0"), 2u);
    }
    std::mt19937 rng(42);
    std::vector<trace_record> records;
    for (std::uint64_t i = 0; i < n; ++i) {
        records.push_back(make_record(info, rng, i));
        auto ok = w->write(records.back());
        EXPECT_TRUE(ok) << ok.error().message;
    }
    EXPECT_EQ(w->records_written(), n);
    auto closed = w->close();
    EXPECT_TRUE(closed) << closed.error().message;
    return records;
}

std::vector<char> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Reads the whole trace; the error message, or "" when it reads.
std::string read_error(const std::string& path) {
    trace_info info;
    auto r = read_trace(path, info);
    return r ? std::string() : r.error().message;
}

void expect_equal(const trace_record& got, const trace_record& want) {
    EXPECT_EQ(got.seq, want.seq);
    EXPECT_EQ(got.tag, want.tag);
    EXPECT_EQ(got.pos, want.pos);
    EXPECT_EQ(got.token, want.token);
    EXPECT_EQ(got.layer, want.layer);
    EXPECT_EQ(got.prefill, want.prefill);
    EXPECT_EQ(got.chosen, want.chosen);
    ASSERT_EQ(got.probs.size(), want.probs.size());
    for (std::size_t i = 0; i < want.probs.size(); ++i) EXPECT_EQ(got.probs[i], f16_round(want.probs[i]));
    ASSERT_EQ(got.lookahead.size(), want.lookahead.size());
    for (std::size_t i = 0; i < want.lookahead.size(); ++i) EXPECT_EQ(got.lookahead[i], f16_round(want.lookahead[i]));
}

TEST(trace, round_trip_small_experts_many_records) {
    const trace_info info = make_info(6, 16, 4, 3);
    EXPECT_EQ(trace_record_bytes(16, 4, 3), 155u);
    const std::string path = temp_path("round_trip.trace");
    // 20000 records of 155 bytes: about three writer buffers and three reader buffers.
    const auto want = write_trace(path, info, 20000);
    EXPECT_EQ(std::filesystem::file_size(path), 20000u * 155u + 36u + 2u * 2u + 10u + 25u + 4u + 6u * 8u +
                                                    (8u + 4u + 2u + 4u + 2u + 8u + 2u + 7u) + 24u);

    auto reader = trace_reader::open(path);
    ASSERT_TRUE(reader) << reader.error().message;
    EXPECT_EQ(reader->record_count(), 20000u);
    const trace_info& got = reader->info();
    EXPECT_EQ(got.model_name, info.model_name);
    EXPECT_EQ(got.model_id, info.model_id);
    EXPECT_EQ(got.n_layer, 6u);
    EXPECT_EQ(got.n_expert, 16u);
    EXPECT_EQ(got.n_expert_used, 4u);
    EXPECT_EQ(got.lookahead_depth, 3u);
    EXPECT_EQ(got.expert_bytes, info.expert_bytes);
    EXPECT_EQ(reader->tag_names(), (std::vector<std::string>{"c/17", "python/3", "prose/0"}));
    trace_record r;
    for (const trace_record& w : want) {
        auto more = reader->next(r);
        ASSERT_TRUE(more) << more.error().message;
        ASSERT_TRUE(*more);
        expect_equal(r, w);
        if (::testing::Test::HasFailure()) return;
    }
    auto end = reader->next(r);
    ASSERT_TRUE(end);
    EXPECT_FALSE(*end);
}

TEST(trace, round_trip_wide_experts_no_tags_no_lookahead) {
    trace_info info = make_info(2, 300, 8, 0);
    info.expert_bytes.clear();
    info.model_id.clear();
    const std::string path = temp_path("wide.trace");
    const auto want = write_trace(path, info, 37, false);
    std::vector<std::string> tags{"stale"};
    trace_info got;
    auto records = read_trace(path, got, &tags);
    ASSERT_TRUE(records) << records.error().message;
    EXPECT_TRUE(tags.empty());
    EXPECT_TRUE(got.expert_bytes.empty());
    EXPECT_EQ(got.n_expert, 300u);
    ASSERT_EQ(records->size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) expect_equal((*records)[i], want[i]);
    // Some chosen experts need the second byte.
    bool wide = false;
    for (const auto& r : *records) {
        for (auto e : r.chosen) wide |= e >= 256;
    }
    EXPECT_TRUE(wide);
}

TEST(trace, empty_trace_and_padding_of_unnamed_tags) {
    const trace_info info = make_info(2, 8, 2, 1);
    const std::string empty = temp_path("empty.trace");
    {
        auto w = trace_writer::create(empty, info);
        ASSERT_TRUE(w);
    }  // the destructor closes it
    trace_info got;
    auto none = read_trace(empty, got);
    ASSERT_TRUE(none) << none.error().message;
    EXPECT_TRUE(none->empty());

    // A tag written without a name gets an empty one, so the table covers every tag.
    const std::string padded = temp_path("padded.trace");
    auto w = trace_writer::create(padded, info);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->intern_tag("only"));
    std::mt19937 rng(1);
    trace_record r = make_record(info, rng, 0);
    r.tag = 4;
    ASSERT_TRUE(w->write(r));
    ASSERT_TRUE(w->close());
    EXPECT_FALSE(w->write(r)) << "a closed writer refuses records";
    std::vector<std::string> tags;
    auto records = read_trace(padded, got, &tags);
    ASSERT_TRUE(records) << records.error().message;
    EXPECT_EQ(tags, (std::vector<std::string>{"only", "", "", "", ""}));
}

TEST(trace, truncation_at_every_byte_is_an_error_naming_file_and_offset) {
    const trace_info info = make_info(3, 8, 2, 2);
    const std::string path = temp_path("small.trace");
    write_trace(path, info, 4);
    const auto bytes = read_bytes(path);
    ASSERT_EQ(read_error(path), "");
    const std::string cut = temp_path("cut.trace");
    for (std::size_t n = 0; n < bytes.size(); ++n) {
        write_bytes(cut, std::vector<char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)));
        const std::string e = read_error(cut);
        ASSERT_NE(e, "") << "a trace cut to " << n << " of " << bytes.size() << " bytes was accepted";
        EXPECT_NE(e.find(cut), std::string::npos) << e;
        EXPECT_NE(e.find("byte"), std::string::npos) << e;
    }
    auto longer = bytes;
    longer.push_back('x');
    write_bytes(cut, longer);
    EXPECT_NE(read_error(cut), "");
}

// Byte offsets of the header fields (see the format in scheduler/trace.h).
constexpr std::size_t at_version = 8, at_header_bytes = 12, at_n_layer = 16, at_n_expert = 20,
                      at_n_expert_used = 24, at_lookahead = 28, at_record_bytes = 32, at_model_name = 36;

void put_u32(std::vector<char>& b, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + i] = static_cast<char>(v >> (8 * i));
}
std::uint32_t get_u32(const std::vector<char>& b, std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + i])) << (8 * i);
    return v;
}

TEST(trace, corrupted_fields_are_errors_naming_the_field) {
    const trace_info info = make_info(3, 8, 2, 2);
    const std::string path = temp_path("fields.trace");
    write_trace(path, info, 4);
    const auto good = read_bytes(path);
    const std::string bad = temp_path("bad.trace");
    const std::size_t header = get_u32(good, at_header_bytes);
    const std::size_t record_bytes = get_u32(good, at_record_bytes);
    ASSERT_EQ(record_bytes, trace_record_bytes(8, 2, 2));
    const std::size_t footer = good.size() - 24;

    struct corruption {
        std::string name;
        std::function<void(std::vector<char>&)> edit;
        std::string expect;  // a piece of the error message
    };
    const std::vector<corruption> cases = {
        {"magic", [](auto& b) { b[0] = 'X'; }, "MOETRACE"},
        {"version", [](auto& b) { put_u32(b, at_version, 2); }, "version 2"},
        {"header_bytes small", [](auto& b) { put_u32(b, at_header_bytes, 10); }, "header_bytes"},
        {"header_bytes big", [](auto& b) { put_u32(b, at_header_bytes, 1u << 30); }, "header_bytes"},
        {"header_bytes off", [&](auto& b) { put_u32(b, at_header_bytes, static_cast<std::uint32_t>(header - 1)); },
         "expert_bytes"},
        {"n_layer zero", [](auto& b) { put_u32(b, at_n_layer, 0); }, "n_layer 0"},
        {"n_layer huge", [](auto& b) { put_u32(b, at_n_layer, 5000); }, "n_layer 5000"},
        {"n_expert", [](auto& b) { put_u32(b, at_n_expert, 100000); }, "n_expert 100000"},
        {"n_expert_used", [](auto& b) { put_u32(b, at_n_expert_used, 9); }, "n_expert_used 9"},
        {"lookahead_depth", [](auto& b) { put_u32(b, at_lookahead, 99); }, "lookahead_depth 99"},
        {"record_bytes", [&](auto& b) { put_u32(b, at_record_bytes, static_cast<std::uint32_t>(record_bytes + 1)); },
         "record_bytes"},
        {"sizes disagree with records", [](auto& b) { put_u32(b, at_n_expert, 9); }, "record_bytes"},
        {"model_name length", [](auto& b) { b[at_model_name] = static_cast<char>(0xff); }, "model_name"},
        {"n_expert_bytes", [&](auto& b) { put_u32(b, header - 4 - 3 * 8, 2); }, "n_expert_bytes 2"},
        {"record_count", [&](auto& b) { b[footer] = 3; }, "tag_table_offset"},
        {"record_count huge", [&](auto& b) { b[footer + 7] = 1; }, "record_count"},
        {"tag_table_offset", [&](auto& b) { b[footer + 8] = static_cast<char>(b[footer + 8] + 1); }, "tag_table_offset"},
        {"tags magic", [&](auto& b) { b[header + 4 * record_bytes] = 'x'; }, "MOETTAGS"},
        {"n_tags", [&](auto& b) { put_u32(b, header + 4 * record_bytes + 8, 1000); }, "n_tags 1000"},
        {"end marker", [](auto& b) { b[b.size() - 3] = 'x'; }, "end marker"},
        {"flags", [&](auto& b) { b[header + 22] = 4; }, "flags"},
        {"layer", [&](auto& b) { b[header + 20] = 7; }, "layer 7"},
        {"tag", [&](auto& b) { b[header + 8] = 9; }, "tag 9"},
        {"chosen range", [&](auto& b) { b[header + 23] = 8; }, "chosen[0] = 8"},
        {"chosen twice", [&](auto& b) { b[header + 24] = b[header + 23]; }, "chosen twice"},
        // f16 NaN (0x7e00) and 2.0 (0x4000) in probs[0] of the second record.
        {"probs nan", [&](auto& b) { b[header + record_bytes + 25] = 0x00; b[header + record_bytes + 26] = 0x7e; },
         "probs[0]"},
        {"lookahead above one",
         [&](auto& b) { b[header + 25 + 2 * 8] = 0x00; b[header + 25 + 2 * 8 + 1] = 0x40; }, "lookahead[0] = 2"},
    };
    for (const corruption& c : cases) {
        auto b = good;
        c.edit(b);
        write_bytes(bad, b);
        const std::string e = read_error(bad);
        EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": error was \"" << e << "\"";
        EXPECT_NE(e.find(bad), std::string::npos) << c.name << ": " << e;
    }
}

TEST(trace, flipping_any_byte_never_crashes) {
    const trace_info info = make_info(2, 8, 2, 1);
    const std::string path = temp_path("flip.trace");
    write_trace(path, info, 3);
    const auto good = read_bytes(path);
    const std::string bad = temp_path("flipped.trace");
    int refused = 0;
    for (std::size_t i = 0; i < good.size(); ++i) {
        for (unsigned char mask : {0x01, 0x80, 0xff}) {
            auto b = good;
            b[i] = static_cast<char>(static_cast<unsigned char>(b[i]) ^ mask);
            write_bytes(bad, b);
            refused += read_error(bad).empty() ? 0 : 1;
        }
    }
    // Many flips (in ids, positions, probabilities' low bits) give another valid trace; the
    // header, footer and tag table flips must not.
    EXPECT_GT(refused, static_cast<int>(good.size()));
}

TEST(trace, writer_refuses_records_of_the_wrong_sizes) {
    const trace_info info = make_info(3, 8, 2, 2);
    auto w = trace_writer::create(temp_path("sizes.trace"), info);
    ASSERT_TRUE(w);
    std::mt19937 rng(3);
    const trace_record good = make_record(info, rng, 1);
    ASSERT_TRUE(w->write(good));
    struct bad_case {
        std::function<void(trace_record&)> edit;
        std::string expect;
    };
    const std::vector<bad_case> cases = {
        {[](auto& r) { r.probs.push_back(0.0f); }, "probs has 9 values"},
        {[](auto& r) { r.chosen.pop_back(); }, "chosen has 1 experts"},
        {[](auto& r) { r.lookahead.resize(8); }, "lookahead has 8 values"},
        {[](auto& r) { r.layer = 3; }, "layer 3"},
        {[](auto& r) { r.pos = -1; }, "pos -1"},
        {[](auto& r) { r.chosen[1] = 8; }, "chosen[1] = 8"},
        {[](auto& r) { r.chosen[1] = r.chosen[0]; }, "twice"},
        {[](auto& r) { r.probs[3] = std::nanf(""); }, "probs[3]"},
        {[](auto& r) { r.lookahead[0] = 1.5f; }, "lookahead[0]"},
    };
    for (const bad_case& c : cases) {
        trace_record r = good;
        c.edit(r);
        auto done = w->write(r);
        ASSERT_FALSE(done) << c.expect;
        EXPECT_EQ(done.error().code, errc::invalid_argument);
        EXPECT_NE(done.error().message.find(c.expect), std::string::npos) << done.error().message;
    }
    ASSERT_TRUE(w->close());
    trace_info got;
    auto records = read_trace(w->path(), got);
    ASSERT_TRUE(records) << records.error().message;
    EXPECT_EQ(records->size(), 1u) << "refused records leave nothing in the file";

    trace_info too_deep = info;
    too_deep.lookahead_depth = 9;
    auto refused = trace_writer::create(temp_path("deep.trace"), too_deep);
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("lookahead_depth 9"), std::string::npos);
    EXPECT_FALSE(trace_writer::create(temp_path("no/such/dir.trace"), info));
}

TEST(trace, a_trace_for_another_model_is_refused) {
    const trace_info trace = make_info(6, 16, 4, 2);
    trace_info model = trace;
    model.lookahead_depth = 0;
    model.model_name = "other name";
    EXPECT_TRUE(check_trace_matches(trace, model));

    model.n_expert = 128;
    auto r = check_trace_matches(trace, model);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("n_expert 16, but this model has 128"), std::string::npos) << r.error().message;

    model = trace;
    model.n_layer = 8;
    r = check_trace_matches(trace, model);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("n_layer"), std::string::npos);

    model = trace;
    model.n_expert_used = 8;
    EXPECT_FALSE(check_trace_matches(trace, model));

    model = trace;
    model.model_id = "qwen3moe:ffffffffffffffff";
    r = check_trace_matches(trace, model);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("model_id"), std::string::npos);
    model.model_id.clear();
    EXPECT_TRUE(check_trace_matches(trace, model)) << "an unknown identity is not a mismatch";
}

}  // namespace
}  // namespace moed::scheduler
