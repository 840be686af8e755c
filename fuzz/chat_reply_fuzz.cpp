// Fuzzes the reply parser (engine/chat_reply.cpp), which splits a model's chat reply into
// reasoning and content as it streams. The input's first byte picks the syntax (none, <think>
// tags, <think> already opened by the prompt, harmony) and a cut position; the rest is the
// reply. Checked: parsing it whole, byte by byte, and in two pieces cut anywhere give the same
// reasoning and content (so streamed deltas add up to the one-shot parse), and the parser
// never writes more bytes than it read.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/log.h"
#include "engine/chat_reply.h"
#include "fuzz/fuzz_support.h"

namespace {

moed::engine::reply_text parse(moed::engine::reply_format format, std::string_view reply, std::size_t piece_bytes,
                               std::size_t first_cut) {
    moed::engine::reply_parser parser(format);
    moed::engine::reply_text out;
    std::size_t at = 0;
    if (first_cut > 0) {
        parser.push(reply.substr(0, first_cut), out);
        at = first_cut;
    }
    while (at < reply.size()) {
        parser.push(reply.substr(at, piece_bytes), out);
        at += piece_bytes;
    }
    parser.finish(out);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace moed::engine;
    if (size == 0) return 0;
    const std::uint8_t pick = data[0];
    const std::string_view reply(reinterpret_cast<const char*>(data + 1), size - 1);
    reply_format format;
    switch (pick % 4) {
        case 0: format = {reasoning_syntax::none, false}; break;
        case 1: format = {reasoning_syntax::think_tags, false}; break;
        case 2: format = {reasoning_syntax::think_tags, true}; break;
        default: format = {reasoning_syntax::harmony, false}; break;
    }
    const std::size_t cut = reply.empty() ? 0 : (pick / 4) % (reply.size() + 1);
    const reply_text whole = parse(format, reply, reply.size() + 1, 0);
    const reply_text bytes = parse(format, reply, 1, 0);
    const reply_text two = parse(format, reply, reply.size() + 1, cut);
    MOED_FUZZ_CHECK(whole.reasoning == bytes.reasoning && whole.content == bytes.content,
                    "byte by byte: reasoning {:?} content {:?}, whole: reasoning {:?} content {:?}", bytes.reasoning,
                    bytes.content, whole.reasoning, whole.content);
    MOED_FUZZ_CHECK(whole.reasoning == two.reasoning && whole.content == two.content,
                    "cut at {}: reasoning {:?} content {:?}, whole: reasoning {:?} content {:?}", cut, two.reasoning,
                    two.content, whole.reasoning, whole.content);
    MOED_FUZZ_CHECK(whole.reasoning.size() + whole.content.size() <= reply.size(), "{} bytes out of {}",
                    whole.reasoning.size() + whole.content.size(), reply.size());
    if (format.syntax == reasoning_syntax::none)
        MOED_FUZZ_CHECK(whole.content == reply && whole.reasoning.empty(), "none changed the reply");
    return 0;
}
