// Checks libmoeclient's C ABI (moed/client.h) against the scripted fake moed: a completion
// and a chat round trip, a stream with its summary and one stopped by the callback, error
// codes with moed's error body handed out and moe_last_error / moe_last_http_status set,
// "not running", NULL and malformed arguments, and that a C++ exception thrown by a
// callback comes back as MOE_ERR_INTERNAL instead of crossing the ABI.
#include <future>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "moed/client.h"
#include "tests/client/fake_server.h"

namespace {

using nlohmann::json;
using moed::test::fake_connection;
using moed::test::fake_server;
using moed::test::json_response;

// Owns a string the library handed out.
struct owned {
    char* p = nullptr;
    ~owned() { moe_free(p); }
    std::string str() const { return p ? std::string(p) : std::string("<null>"); }
};

struct handle {
    explicit handle(const std::string& path) : h(moe_client_open(path.c_str())) {}
    ~handle() { moe_client_close(h); }
    moe_client* h;
};

const char* completion =
    R"({"id":"cmpl-1","choices":[{"index":0,"text":"ok","finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}})";

TEST(c_api, complete_round_trip) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(completion));
    });
    handle c(server.path());
    ASSERT_NE(c.h, nullptr);
    owned out;
    ASSERT_EQ(moe_complete(c.h, R"({"prompt":"hi","max_tokens":4})", &out.p), MOE_OK) << moe_last_error(c.h);
    EXPECT_EQ(out.str(), completion);
    EXPECT_STREQ(moe_last_error(c.h), "");
    EXPECT_EQ(moe_last_http_status(c.h), 200);

    owned chat;
    ASSERT_EQ(moe_complete(c.h, R"({"messages":[{"role":"user","content":"hi"}]})", &chat.p), MOE_OK);
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 2u);
    EXPECT_EQ(requests[0].target, "/v1/completions");
    EXPECT_EQ(json::parse(requests[0].body)["stream"], false);
    EXPECT_EQ(json::parse(requests[0].body)["max_tokens"], 4);
    EXPECT_EQ(requests[1].target, "/v1/chat/completions");
}

struct collected {
    std::string text;
    int calls = 0;
    int stop_after = -1;  // stop when calls reaches this
};

int collect(const char* text, size_t length, void* user) {
    auto* c = static_cast<collected*>(user);
    c->text.append(text, length);
    ++c->calls;
    return c->calls == c->stop_after ? 1 : 0;
}

std::string event(const std::string& text) {
    return "data: " + json({{"id", "cmpl-s"}, {"choices", json::array({{{"index", 0}, {"text", text}}})}}).dump() +
           "\n\n";
}

TEST(c_api, stream_and_summary) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write_pieces({moed::test::sse_head(false), event("one "), event("two"),
                        "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}],"
                        "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"total_tokens\":4}}\n\n",
                        "data: [DONE]\n\n"});
    });
    handle c(server.path());
    collected got;
    owned summary;
    ASSERT_EQ(moe_stream(c.h, R"({"prompt":"count"})", collect, &got, &summary.p), MOE_OK) << moe_last_error(c.h);
    EXPECT_EQ(got.text, "one two");
    EXPECT_EQ(got.calls, 2);
    const json s = json::parse(summary.str());
    EXPECT_EQ(s["text"], "one two");
    EXPECT_EQ(s["id"], "cmpl-s");
    EXPECT_EQ(s["finish_reason"], "length");
    EXPECT_EQ(s["usage"]["total_tokens"], 4);
    EXPECT_EQ(json::parse(server.requests().at(0).body)["stream"], true);
}

TEST(c_api, stream_stopped_by_the_callback) {
    std::promise<bool> closed;
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(moed::test::sse_head(false) + event("a"));
        closed.set_value(c.wait_peer_closed());
    });
    handle c(server.path());
    collected got;
    got.stop_after = 1;
    owned summary;
    ASSERT_EQ(moe_stream(c.h, R"({"prompt":"x"})", collect, &got, &summary.p), MOE_OK);
    EXPECT_EQ(got.calls, 1);
    EXPECT_EQ(json::parse(summary.str())["finish_reason"], "cancelled");
    EXPECT_TRUE(closed.get_future().get());
}

TEST(c_api, http_error_hands_out_the_body) {
    const std::string body = R"({"error":{"type":"not_found","message":"model 'big' is not loaded"}})";
    fake_server server([&](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(json_response(body, 404, "Not Found"));
    });
    handle c(server.path());
    owned out;
    EXPECT_EQ(moe_complete(c.h, R"({"model":"big","prompt":"x"})", &out.p), MOE_ERR_HTTP);
    EXPECT_EQ(out.str(), body);
    EXPECT_EQ(moe_last_http_status(c.h), 404);
    EXPECT_NE(std::string(moe_last_error(c.h)).find("model 'big' is not loaded"), std::string::npos)
        << moe_last_error(c.h);
    EXPECT_STREQ(moe_strerror(MOE_ERR_HTTP), "http");
}

TEST(c_api, not_running_and_bad_arguments) {
    const std::string missing = (moed::test::temp_dir() / "c-missing.sock").string();
    handle c(missing);
    ASSERT_NE(c.h, nullptr);
    char sentinel = 0;
    char* p = &sentinel;  // must be set to NULL on failure
    EXPECT_EQ(moe_status_json(c.h, &p), MOE_ERR_NOT_RUNNING);
    EXPECT_EQ(p, nullptr);
    owned out;
    EXPECT_EQ(std::string(moe_last_error(c.h)),
              "moed is not running: cannot connect to " + missing + " (No such file or directory)");
    EXPECT_EQ(moe_last_http_status(c.h), 0);
    EXPECT_EQ(moe_health(c.h), MOE_ERR_NOT_RUNNING);
    EXPECT_EQ(moe_models_json(c.h, &out.p), MOE_ERR_NOT_RUNNING);

    EXPECT_EQ(moe_complete(nullptr, "{}", &out.p), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(moe_complete(c.h, nullptr, &out.p), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(moe_complete(c.h, "not json", &out.p), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(moe_last_error(c.h)).find("not a JSON object"), std::string::npos);
    EXPECT_EQ(moe_stream(c.h, "[]", nullptr, nullptr, nullptr), MOE_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(moe_last_error(nullptr)).find("NULL"), std::string::npos);
    EXPECT_EQ(moe_last_http_status(nullptr), 0);
    moe_client_close(nullptr);
    moe_free(nullptr);
    EXPECT_STREQ(moe_strerror(12345), "unknown");
    EXPECT_STREQ(moe_version(), "0.2.0");
}

TEST(c_api, timeouts_apply) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.wait_peer_closed();
    });
    handle c(server.path());
    ASSERT_EQ(moe_set_timeouts(c.h, 0, 50), MOE_OK);
    EXPECT_EQ(moe_health(c.h), MOE_ERR_TIMEOUT);
    EXPECT_EQ(moe_set_timeouts(nullptr, 1, 1), MOE_ERR_INVALID_ARGUMENT);
}

int throwing_callback(const char*, size_t, void*) { throw std::runtime_error("callback failed"); }

TEST(c_api, callback_exception_does_not_cross_the_abi) {
    fake_server server([](fake_connection& c) {
        ASSERT_TRUE(c.read_request());
        c.write(moed::test::sse_head(false) + event("a"));
        c.wait_peer_closed();
    });
    handle c(server.path());
    owned out;
    EXPECT_EQ(moe_stream(c.h, R"({"prompt":"x"})", throwing_callback, nullptr, &out.p), MOE_ERR_INTERNAL);
    EXPECT_EQ(out.p, nullptr);
    EXPECT_NE(std::string(moe_last_error(c.h)).find("callback failed"), std::string::npos);
}

}  // namespace
