// Checks reply_parser, which splits a chat reply into reasoning and content: <think> blocks
// (opened by the reply or already by the prompt; trimmed as llama.cpp trims them; an
// unfinished block, a lone "<thi" and text without a block), harmony messages (analysis is
// reasoning, final and commentary content, headers dropped, text outside the format kept as
// content) and the none syntax (everything content, untouched). Streaming is checked as a
// property: for every reply, feeding it whole, byte by byte, and cut at every position into
// two pieces gives the same reasoning and content, so SSE deltas add up to the one-shot parse.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/chat_reply.h"

namespace moed::engine {
namespace {

reply_text parse_pieces(reply_format format, const std::vector<std::string>& pieces) {
    reply_parser parser(format);
    reply_text all;
    reply_text delta;
    for (const std::string& piece : pieces) {
        delta.clear();
        parser.push(piece, delta);
        all.reasoning += delta.reasoning;
        all.content += delta.content;
    }
    delta.clear();
    parser.finish(delta);
    all.reasoning += delta.reasoning;
    all.content += delta.content;
    return all;
}

// Parses `reply` whole, byte by byte and in every two-piece cut; all must agree.
reply_text parse(reply_format format, const std::string& reply) {
    const reply_text whole = parse_pieces(format, {reply});
    std::vector<std::string> bytes;
    for (char c : reply) bytes.emplace_back(1, c);
    const reply_text by_byte = parse_pieces(format, bytes);
    EXPECT_EQ(by_byte.reasoning, whole.reasoning) << "byte by byte: " << reply;
    EXPECT_EQ(by_byte.content, whole.content) << "byte by byte: " << reply;
    for (std::size_t cut = 0; cut <= reply.size(); ++cut) {
        const reply_text two = parse_pieces(format, {reply.substr(0, cut), reply.substr(cut)});
        EXPECT_EQ(two.reasoning, whole.reasoning) << "cut at " << cut << ": " << reply;
        EXPECT_EQ(two.content, whole.content) << "cut at " << cut << ": " << reply;
    }
    return whole;
}

constexpr reply_format k_think{reasoning_syntax::think_tags, false};
constexpr reply_format k_think_open{reasoning_syntax::think_tags, true};
constexpr reply_format k_harmony{reasoning_syntax::harmony, false};
constexpr reply_format k_none{reasoning_syntax::none, false};

TEST(reply_parser, think_block_is_reasoning_and_the_rest_content) {
    auto r = parse(k_think, "<think>\nLet me add.\n2+2 is 4.\n</think>\n\nThe answer is 4.");
    EXPECT_EQ(r.reasoning, "Let me add.\n2+2 is 4.");
    EXPECT_EQ(r.content, "The answer is 4.");

    // Leading whitespace before the block (GLM writes "\n<think>"), none inside it.
    r = parse(k_think, "\n<think>Short.</think>Done.");
    EXPECT_EQ(r.reasoning, "Short.");
    EXPECT_EQ(r.content, "Done.");

    // An empty block (Qwen3 with thinking off writes one).
    r = parse(k_think, "<think>\n\n</think>\n\nHi!");
    EXPECT_EQ(r.reasoning, "");
    EXPECT_EQ(r.content, "Hi!");
}

TEST(reply_parser, a_prompt_that_opened_think_starts_in_reasoning) {
    auto r = parse(k_think_open, "Okay, the user wants 4.\n</think>\n\n4");
    EXPECT_EQ(r.reasoning, "Okay, the user wants 4.");
    EXPECT_EQ(r.content, "4");
    // A later <think> is content (only the reply's start holds reasoning).
    r = parse(k_think_open, "a</think>b<think>c</think>");
    EXPECT_EQ(r.reasoning, "a");
    EXPECT_EQ(r.content, "b<think>c</think>");
}

TEST(reply_parser, replies_without_a_block_are_content) {
    auto r = parse(k_think, "Hello <think> there");
    EXPECT_EQ(r.reasoning, "");
    EXPECT_EQ(r.content, "Hello <think> there");
    r = parse(k_think, "  \n Hi");
    EXPECT_EQ(r.content, "Hi");
    // A start of <think> that the reply never finishes is text.
    r = parse(k_think, "<thi");
    EXPECT_EQ(r.content, "<thi");
    EXPECT_EQ(r.reasoning, "");
    r = parse(k_think, "<thinking>");
    EXPECT_EQ(r.content, "<thinking>");
    r = parse(k_think, "");
    EXPECT_EQ(r.content, "");
    EXPECT_EQ(r.reasoning, "");
}

TEST(reply_parser, an_unfinished_block_is_all_reasoning) {
    // Cut by max_tokens inside the reasoning; a partial "</thi" is reasoning text.
    auto r = parse(k_think, "<think>\nStill thinking </thi");
    EXPECT_EQ(r.reasoning, "Still thinking </thi");
    EXPECT_EQ(r.content, "");
    r = parse(k_think_open, "  one\n\n two  \n");
    EXPECT_EQ(r.reasoning, "one\n\n two");
}

TEST(reply_parser, whitespace_inside_reasoning_is_kept_and_held_only_at_its_end) {
    reply_parser parser(k_think);
    reply_text out;
    parser.push("<think>a", out);
    EXPECT_EQ(out.reasoning, "a");
    out.clear();
    parser.push("  \n", out);
    EXPECT_EQ(out.reasoning, "") << "trailing whitespace waits for what follows";
    parser.push("b </", out);
    EXPECT_EQ(out.reasoning, "  \nb") << "released once text follows; ' </' may start </think>";
    out.clear();
    parser.push("think> c", out);
    EXPECT_EQ(out.reasoning, "");
    EXPECT_EQ(out.content, "c");
}

TEST(reply_parser, harmony_analysis_is_reasoning_and_final_is_content) {
    auto r = parse(k_harmony,
                   "<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|>"
                   "<|start|>assistant<|channel|>final<|message|>2+2 = 4.");
    EXPECT_EQ(r.reasoning, "User asks 2+2. Answer 4.");
    EXPECT_EQ(r.content, "2+2 = 4.");

    // A commentary preamble and a constrained header are content; bodies are not trimmed.
    r = parse(k_harmony,
              "<|channel|>analysis<|message|> a <|end|><|start|>assistant<|channel|>commentary<|message|>Let me "
              "check.<|end|><|start|>assistant<|channel|>analysis<|message|>b<|end|><|start|>assistant<|channel|>final "
              "<|constrain|>text<|message|>Done <|en");
    EXPECT_EQ(r.reasoning, " a b");
    EXPECT_EQ(r.content, "Let me check.Done <|en");
}

TEST(reply_parser, harmony_text_outside_the_format_is_content) {
    auto r = parse(k_harmony, "Plain answer.");
    EXPECT_EQ(r.content, "Plain answer.");
    EXPECT_EQ(r.reasoning, "");
    // A header that never reaches <|message|> within its bound is not one.
    const std::string long_header = "<|channel|>" + std::string(300, 'x') + "<|message|>y";
    r = parse(k_harmony, long_header);
    EXPECT_EQ(r.content, long_header);
    // An unfinished header at the end is markup, dropped.
    r = parse(k_harmony, "<|channel|>final<|message|>Hi<|end|><|start|>assistant<|chan");
    EXPECT_EQ(r.content, "Hi");
}

TEST(reply_parser, none_passes_everything_through) {
    auto r = parse(k_none, "  <think>x</think> <|channel|>analysis<|message|>y ");
    EXPECT_EQ(r.content, "  <think>x</think> <|channel|>analysis<|message|>y ");
    EXPECT_EQ(r.reasoning, "");
    // Each piece comes out as it goes in: nothing is held back.
    reply_parser parser(k_none);
    reply_text out;
    parser.push("<thi", out);
    EXPECT_EQ(out.content, "<thi");
}

}  // namespace
}  // namespace moed::engine
