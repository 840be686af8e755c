// The in-process HTTP server fixture of the daemon's HTTP tests: a fake engine in place of
// the batch loop (it emits scripted text pieces from its own thread, as the engine thread
// would, and can hold a job until it is cancelled or released, fail it, or refuse it), and
// an http_server on a real Unix socket in a temporary folder, run by its own io thread. The
// bundled model supplies the tokenizer.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include "daemon/http_server.h"
#include "daemon/listener.h"
#include "engine/model.h"
#include "tests/daemon/http_test_client.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {

using test::http_connection;
using test::http_reply;
namespace http = boost::beast::http;

// How long a condition-variable wait may take before the test calls the server stuck; a
// safety net for a broken build, never a measurement.
constexpr auto stuck_after = std::chrono::seconds(60);

class fake_engine final : public engine_port {
public:
    struct received {
        job_id id;
        job_params params;
    };

    fake_engine() : worker_([this] { run(); }) {}
    ~fake_engine() override { stop(); }

    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        cv_.notify_all();
        if (worker_.joinable()) worker_.join();
    }

    // Behaviour of the jobs submitted from now on.
    void script(std::vector<std::string> pieces, std::string finish = "length") {
        std::lock_guard lock(mutex_);
        pieces_ = std::move(pieces);
        finish_ = std::move(finish);
    }
    void set_hold(bool hold) {
        std::lock_guard lock(mutex_);
        hold_ = hold;
    }
    // Lets every held job (now and later) finish as scripted instead of waiting for a cancel.
    void release_held() {
        {
            std::lock_guard lock(mutex_);
            released_ = true;
        }
        cv_.notify_all();
    }
    void set_fail(std::optional<std::string> message) {
        std::lock_guard lock(mutex_);
        fail_ = std::move(message);
    }
    void set_submit_error(std::optional<error> e) {
        std::lock_guard lock(mutex_);
        submit_error_ = std::move(e);
    }

    result<job_id> submit(job_params params, std::shared_ptr<job_sink> sink) override {
        std::lock_guard lock(mutex_);
        if (submit_error_) return unexpected(*submit_error_);
        const job_id id = ++next_id_;
        received_.push_back({id, params});
        queue_.push_back({id, std::move(sink), pieces_, finish_, hold_, fail_});
        cv_.notify_all();
        return id;
    }

    void cancel(job_id id) noexcept override {
        std::lock_guard lock(mutex_);
        cancelled_.insert(id);
        cv_.notify_all();
    }

    void snapshot(server_status& s) const override {
        std::lock_guard lock(mutex_);
        s.queue_capacity = 4;
        s.max_sequences = 2;
        s.running_sequences = running_;
        s.requests_total = next_id_;
    }

    std::vector<received> jobs() const {
        std::lock_guard lock(mutex_);
        return received_;
    }
    // Waits until job `id` ended as cancelled (by cancel() or its sink's gone()).
    bool wait_cancelled(job_id id) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, stuck_after, [&] { return ended_cancelled_.count(id) > 0; });
    }
    // Waits until `n` jobs in all were submitted.
    bool wait_submitted(std::size_t n) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, stuck_after, [&] { return received_.size() >= n; });
    }
    bool wait_running(std::uint32_t n) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, stuck_after, [&] { return running_ >= n; });
    }

private:
    struct job {
        job_id id;
        std::shared_ptr<job_sink> sink;
        std::vector<std::string> pieces;
        std::string finish;
        bool hold;
        std::optional<std::string> fail;
    };

    // The "engine thread": one job at a time, as the sinks expect any thread.
    void run() {
        std::unique_lock lock(mutex_);
        for (;;) {
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_) {
                for (auto& j : queue_) j.sink->on_done("cancelled", {});
                return;
            }
            job j = std::move(queue_.front());
            queue_.pop_front();
            ++running_;
            cv_.notify_all();
            lock.unlock();
            job_usage usage{3, 0};
            for (const auto& p : j.pieces) {
                j.sink->on_token(1, p);
                ++usage.completion_tokens;
            }
            lock.lock();
            bool cancelled = false;
            if (j.hold) {
                // Polls gone() as the loop does once per step.
                while (!stopping_ && !released_ && !cancelled_.count(j.id) && !j.sink->gone())
                    cv_.wait_for(lock, std::chrono::milliseconds(5));
                cancelled = !released_ || j.sink->gone();
            }
            cancelled = cancelled || cancelled_.count(j.id) > 0;
            --running_;
            if (cancelled) ended_cancelled_.insert(j.id);
            lock.unlock();
            if (cancelled) j.sink->on_done("cancelled", usage);
            else if (j.fail) j.sink->on_failed(error{errc::io, *j.fail}, usage);
            else j.sink->on_done(j.finish, usage);
            lock.lock();
            cv_.notify_all();
        }
    }

    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<job> queue_;
    std::vector<received> received_;
    std::set<job_id> cancelled_;
    std::set<job_id> ended_cancelled_;
    std::vector<std::string> pieces_{"Hel", "lo", " world"};
    std::string finish_ = "length";
    bool hold_ = false;
    bool released_ = false;
    std::optional<std::string> fail_;
    std::optional<error> submit_error_;
    job_id next_id_ = 0;
    std::uint32_t running_ = 0;
    bool stopping_ = false;
    std::thread worker_;
};

class HttpServer : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto m = engine::model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
        ASSERT_TRUE(m.has_value()) << m.error().message;
        model_ = std::move(*m).release();
    }
    static void TearDownTestSuite() {
        delete model_;
        model_ = nullptr;
    }

    void start(http_options options = {}, std::function<void(server_context&)> customize = {}) {
        static int counter = 0;
        socket_path_ = (test::temp_dir() / fmt::format("s{}.sock", ++counter)).string();
        auto l = open_listener(io_, {socket_path_, socket_mode_, ""});
        ASSERT_TRUE(l.has_value()) << l.error().message;
        listener_ = std::move(*l);
        server_context ctx;
        ctx.engine = &engine_;
        ctx.vocab = &model_->vocab();
        ctx.chat = engine::chat_template::chatml();
        ctx.model_id = "tinymoe";
        ctx.n_ctx = 64;
        ctx.limits = {100, 20, 4};
        ctx.started_unix = 1;
        ctx.fill_status = [this](server_status& s) {
            s.model.id = "tinymoe";
            engine_.snapshot(s);
        };
        if (customize) customize(ctx);
        server_ = std::make_unique<http_server>(io_, std::move(listener_->acceptor), std::move(ctx), options);
        server_->start();
        io_thread_ = std::thread([this] { io_.run(); });
    }

    void TearDown() override {
        engine_.stop();
        io_.stop();
        if (io_thread_.joinable()) io_thread_.join();
        server_.reset();
    }

    // Runs `f` on the io thread and waits for it.
    void on_io(std::function<void()> f) {
        std::promise<void> done;
        boost::asio::post(io_, [&] {
            f();
            done.set_value();
        });
        done.get_future().wait();
    }

    http_reply post(const std::string& target, const std::string& body) { return test::post(socket_path_, target, body); }
    http_reply get(const std::string& target) { return test::get(socket_path_, target); }

    inline static engine::model* model_ = nullptr;
    fake_engine engine_;  // first: outlives the io_context and the server
    boost::asio::io_context io_;
    std::unique_ptr<listener> listener_;
    std::unique_ptr<http_server> server_;
    std::thread io_thread_;
    std::string socket_path_;
    std::uint32_t socket_mode_ = 0600;  // a test may widen it before start()
};

inline void expect_error(const http_reply& r, unsigned status, const std::string& type, const std::string& message) {
    EXPECT_EQ(r.status, status) << r.body;
    EXPECT_EQ(r.content_type, "application/json");
    EXPECT_EQ(r.error_type(), type) << r.body;
    EXPECT_EQ(r.error_message(), message) << r.body;
}

}  // namespace moed::daemon
