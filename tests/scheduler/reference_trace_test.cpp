// The reference routing loader (scheduler/reference_trace.h): a few lines in the shared
// file's format load into records with the expected shape, synthesized probabilities and
// tag names; malformed lines fail with an error naming the source line and the problem.
#include <gtest/gtest.h>

#include <sstream>

#include "scheduler/reference_trace.h"

namespace moed::scheduler {
namespace {

result<trace_data> load(const std::string& text, std::uint32_t n_expert = 0) {
    std::istringstream in(text);
    reference_trace_options o;
    o.n_expert = n_expert;
    return read_reference_trace(in, "ref.jsonl", o);
}

TEST(ReferenceTrace, LoadsRowsAsRecords) {
    const std::string text =
        R"({"d":"c","p":"c-07","l":0,"t":0,"tok":363,"e":[3,1],"w":[0.7,0.3]})" "\n"
        R"({"d":"c","p":"c-07","l":1,"t":0,"tok":363,"e":[0,2],"w":[0.6,0.4]})" "\n"
        "\n"
        R"({"d":"shell","p":"shell-12","l":0,"t":0,"tok":5,"e":[2,3],"w":[0.5,0.5]})" "\n";
    auto t = load(text);
    ASSERT_TRUE(t.has_value()) << t.error().message;
    EXPECT_EQ(t->info.n_layer, 2u);
    EXPECT_EQ(t->info.n_expert, 4u);  // largest id + 1
    EXPECT_EQ(t->info.n_expert_used, 2u);
    EXPECT_EQ(t->info.lookahead_depth, 0u);
    ASSERT_EQ(t->records.size(), 3u);
    const trace_record& r = t->records[0];
    EXPECT_EQ(r.chosen, (std::vector<std::int32_t>{3, 1}));
    EXPECT_EQ(r.probs, (std::vector<float>{0.0f, 0.3f, 0.0f, 0.7f}));
    EXPECT_EQ(r.token, 363);
    EXPECT_TRUE(r.prefill);
    EXPECT_EQ(t->records[2].tag, 1u);
    EXPECT_EQ(t->records[2].seq, 1u);
    ASSERT_EQ(t->tag_names.size(), 2u);
    EXPECT_EQ(t->tag_names[0], "c/07");
    EXPECT_EQ(tag_domain(*t, 1), "shell");

    auto wide = load(text, 16);
    ASSERT_TRUE(wide.has_value());
    EXPECT_EQ(wide->info.n_expert, 16u);
    EXPECT_FALSE(load(text, 3).has_value());  // expert 3 does not fit 3 experts
}

TEST(ReferenceTrace, BadLinesNameTheLine) {
    const std::string good = R"({"d":"c","p":"c-0","l":0,"t":0,"tok":1,"e":[0,1],"w":[0.5,0.5]})" "\n";
    struct bad_case {
        std::string line;
        std::string says;
    };
    const std::vector<bad_case> cases = {
        {"not json", "not a JSON object"},
        {R"({"d":"c","p":"c-0","l":0,"t":1,"tok":1,"e":[0,1]})", "missing field 'w'"},
        {R"({"d":"c","p":"c-0","l":0,"t":1,"tok":1,"e":[0,1],"w":[0.5]})", "'e' has 2 experts and 'w' 1"},
        {R"({"d":"c","p":"c-0","l":0,"t":1,"tok":1,"e":[0],"w":[1.0]})", "1 chosen experts, earlier lines have 2"},
        {R"({"d":"c","p":"c-0","l":-1,"t":1,"tok":1,"e":[0,1],"w":[0.5,0.5]})", "layer -1 out of range"},
        {R"({"d":"c","p":"c-0","l":0,"t":1,"tok":1,"e":[0,-2],"w":[0.5,0.5]})", "expert -2 out of range"},
        {R"({"d":"c","p":"c-0","l":0,"t":1,"tok":1,"e":[1,1],"w":[0.5,0.5]})", "expert 1 chosen twice"},
        {R"({"d":"c","p":"c-0","l":0,"t":0,"tok":1,"e":[0,1],"w":[0.5,0.5]})", "given twice"},
        {R"({"d":"c","p":"c-0","l":"x","t":1,"tok":1,"e":[0,1],"w":[0.5,0.5]})", "field 'l' has the wrong type"},
    };
    for (const bad_case& c : cases) {
        auto t = load(good + c.line + "\n");
        ASSERT_FALSE(t.has_value()) << c.line;
        EXPECT_EQ(t.error().code, errc::bad_file);
        EXPECT_NE(t.error().message.find("ref.jsonl:2"), std::string::npos) << t.error().message;
        EXPECT_NE(t.error().message.find(c.says), std::string::npos) << t.error().message;
    }
    EXPECT_FALSE(load("").has_value());
}

}  // namespace
}  // namespace moed::scheduler
