// Checks the pure logic of bench/soak (bench/soak_stats.h) without a daemon: durations are
// read as the flags document them and bad ones are refused naming the problem; each
// combination of facts about a request gets the outcome the soak's pass/fail rests on
// (deliberate disconnects, a full queue and the churned profile are expected, everything else
// a daemon should not do is not); the least-squares slope recovers known lines; the RSS
// growth uses only the last half of the run; the verdict fails on growth, on too few
// samples, on any unexpected error and on a bad daemon exit.
#include <gtest/gtest.h>

#include <vector>

#include "bench/soak_stats.h"

namespace {

using namespace moed::bench::soak;

TEST(SoakDuration, ReadsUnitsAndSums) {
    EXPECT_EQ(parse_duration_s("90s").value(), 90);
    EXPECT_EQ(parse_duration_s("10m").value(), 600);
    EXPECT_EQ(parse_duration_s("1h").value(), 3600);
    EXPECT_EQ(parse_duration_s("1h30m").value(), 5400);
    EXPECT_EQ(parse_duration_s("2m5s").value(), 125);
    EXPECT_EQ(parse_duration_s("45").value(), 45);
}

TEST(SoakDuration, RefusesBadTextNamingIt) {
    for (const char* bad : {"", "0s", "0", "h", "10x", "1h30", "-5s", "1.5h", "s10", "10 m", "200h"}) {
        auto r = parse_duration_s(bad);
        ASSERT_FALSE(r.has_value()) << bad;
        EXPECT_EQ(r.error().code, moed::errc::invalid_argument) << bad;
        if (*bad != '\0') {
            EXPECT_NE(r.error().message.find(bad), std::string::npos) << r.error().message;
        }
    }
    EXPECT_NE(parse_duration_s("10x").error().message.find("unknown unit 'x'"), std::string::npos);
}

attempt answered(int status, bool stream = false) {
    attempt a;
    a.http_status = status;
    a.stream = stream;
    a.saw_done = stream;
    return a;
}

TEST(SoakClassify, CompleteAnswersAreOk) {
    EXPECT_EQ(classify(answered(200)), outcome::ok);
    EXPECT_EQ(classify(answered(200, /*stream=*/true)), outcome::ok);
}

TEST(SoakClassify, ExpectedKinds) {
    EXPECT_EQ(classify(answered(429)), outcome::back_pressure);
    attempt queue_full_in_stream = answered(200, true);
    queue_full_in_stream.stream_error_status = 429;
    EXPECT_EQ(classify(queue_full_in_stream), outcome::back_pressure);

    attempt cut = answered(200, true);
    cut.saw_done = false;
    cut.cut_by_us = true;
    EXPECT_EQ(classify(cut), outcome::disconnect);

    attempt churn = answered(400);
    churn.profile_may_be_missing = true;
    EXPECT_EQ(classify(churn), outcome::profile_churn);
    churn.http_status = 404;
    EXPECT_EQ(classify(churn), outcome::profile_churn);
    for (outcome o : {outcome::ok, outcome::back_pressure, outcome::disconnect, outcome::profile_churn})
        EXPECT_FALSE(is_unexpected(o)) << outcome_name(o);
}

TEST(SoakClassify, UnexpectedKinds) {
    EXPECT_EQ(classify(answered(500)), outcome::http_error);
    EXPECT_EQ(classify(answered(503)), outcome::http_error);
    // A 400 for a request we made valid is the daemon's fault unless its profile was churning.
    EXPECT_EQ(classify(answered(400)), outcome::http_error);
    attempt churn_but_500 = answered(500);
    churn_but_500.profile_may_be_missing = true;
    EXPECT_EQ(classify(churn_but_500), outcome::http_error);

    attempt error_event = answered(200, true);
    error_event.stream_error_status = 500;
    EXPECT_EQ(classify(error_event), outcome::stream_error);

    attempt no_done = answered(200, true);
    no_done.saw_done = false;
    EXPECT_EQ(classify(no_done), outcome::truncated);
    attempt reset_mid_stream = answered(200, true);
    reset_mid_stream.saw_done = false;
    reset_mid_stream.io = transport::failed;
    EXPECT_EQ(classify(reset_mid_stream), outcome::truncated);

    attempt reset_whole = answered(200);
    reset_whole.io = transport::failed;
    EXPECT_EQ(classify(reset_whole), outcome::connection);
    attempt refused;
    refused.io = transport::failed;
    EXPECT_EQ(classify(refused), outcome::connection);
    attempt silent;
    silent.io = transport::timeout;
    EXPECT_EQ(classify(silent), outcome::timeout);
    attempt silent_mid_stream = answered(200, true);
    silent_mid_stream.saw_done = false;
    silent_mid_stream.io = transport::timeout;
    EXPECT_EQ(classify(silent_mid_stream), outcome::timeout);

    // What we saw wrong is reported even when we would have cut the stream next.
    attempt bad = answered(200, true);
    bad.malformed = true;
    bad.cut_by_us = true;
    EXPECT_EQ(classify(bad), outcome::malformed);
    for (outcome o : {outcome::http_error, outcome::stream_error, outcome::malformed, outcome::truncated,
                      outcome::connection, outcome::timeout})
        EXPECT_TRUE(is_unexpected(o)) << outcome_name(o);
}

TEST(SoakSlope, RecoversALine) {
    const std::vector<point> line{{0, 5}, {1, 7}, {2, 9}, {3, 11}};
    EXPECT_DOUBLE_EQ(least_squares_slope(line).value(), 2.0);
    const std::vector<point> flat{{0, 3}, {10, 3}, {20, 3}};
    EXPECT_DOUBLE_EQ(least_squares_slope(flat).value(), 0.0);
    // A noisy line: sum(dx*dy) / sum(dx*dx) = -7 / 5.
    const std::vector<point> noisy{{0, 1}, {1, -2}, {2, -1}, {3, -4}};
    EXPECT_NEAR(least_squares_slope(noisy).value(), -1.4, 1e-12);
}

TEST(SoakSlope, NoneWithoutSpread) {
    EXPECT_FALSE(least_squares_slope(std::vector<point>{}).has_value());
    EXPECT_FALSE(least_squares_slope(std::vector<point>{{1, 1}}).has_value());
    EXPECT_FALSE(least_squares_slope(std::vector<point>{{1, 1}, {1, 5}}).has_value());
}

TEST(SoakGrowth, UsesOnlyTheLastHalf) {
    // RSS climbs steeply during warm-up (first half), then 1 MiB per minute.
    std::vector<point> samples;
    constexpr double mib = 1024.0 * 1024.0;
    for (int t = 0; t < 300; t += 10) samples.push_back({double(t), 100 * mib * t / 300.0});
    for (int t = 300; t <= 600; t += 10) samples.push_back({double(t), 200 * mib + mib * (t - 300) / 60.0});
    const rss_growth g = last_half_growth(samples, 600.0);
    EXPECT_EQ(g.samples, 31u);
    EXPECT_DOUBLE_EQ(g.from_s, 300.0);
    EXPECT_EQ(g.start_bytes, static_cast<std::int64_t>(200 * mib));
    EXPECT_EQ(g.end_bytes, static_cast<std::int64_t>(205 * mib));
    EXPECT_EQ(g.growth_bytes, static_cast<std::int64_t>(5 * mib));
    EXPECT_NEAR(g.slope_bytes_per_minute.value(), mib, 1e-3);
}

TEST(SoakGrowth, TooFewSamplesGiveNoSlope) {
    const std::vector<point> samples{{0, 1}, {40, 2}, {60, 3}, {100, 4}};
    const rss_growth g = last_half_growth(samples, 100.0);
    EXPECT_EQ(g.samples, 2u);
    EXPECT_EQ(g.growth_bytes, 1);
    EXPECT_FALSE(g.slope_bytes_per_minute.has_value());
}

rss_growth with_slope_mib_per_hour(double mib_per_hour) {
    rss_growth g;
    g.samples = 10;
    g.slope_bytes_per_minute = mib_per_hour * 1024.0 * 1024.0 / 60.0;
    return g;
}

TEST(SoakVerdict, PassesFlatAndCleanRuns) {
    const verdict v = judge(with_slope_mib_per_hour(0.5), 8.0, 0, true);
    EXPECT_TRUE(v.rss_growth_last_half_ok);
    EXPECT_TRUE(v.no_unexpected_errors);
    EXPECT_TRUE(v.pass);
    EXPECT_EQ(v.reason, "");
    // Shrinking is not growth.
    EXPECT_TRUE(judge(with_slope_mib_per_hour(-30), 8.0, 0, true).pass);
}

TEST(SoakVerdict, FailsEachWayWithAReason) {
    const verdict growing = judge(with_slope_mib_per_hour(9.0), 8.0, 0, true);
    EXPECT_FALSE(growing.rss_growth_last_half_ok);
    EXPECT_FALSE(growing.pass);
    EXPECT_NE(growing.reason.find("RSS grew 9.00 MiB/hour"), std::string::npos) << growing.reason;
    EXPECT_FALSE(judge(with_slope_mib_per_hour(8.0), 8.0, 0, true).pass);  // the limit is exclusive

    const verdict errors = judge(with_slope_mib_per_hour(0.0), 8.0, 3, true);
    EXPECT_TRUE(errors.rss_growth_last_half_ok);
    EXPECT_FALSE(errors.no_unexpected_errors);
    EXPECT_FALSE(errors.pass);
    EXPECT_NE(errors.reason.find("3 unexpected errors"), std::string::npos) << errors.reason;

    rss_growth few;
    few.samples = 2;
    const verdict no_slope = judge(few, 8.0, 0, true);
    EXPECT_FALSE(no_slope.rss_growth_last_half_ok);
    EXPECT_FALSE(no_slope.pass);
    EXPECT_NE(no_slope.reason.find("2 samples"), std::string::npos) << no_slope.reason;

    const verdict bad_exit = judge(with_slope_mib_per_hour(0.0), 8.0, 0, false);
    EXPECT_FALSE(bad_exit.pass);
    EXPECT_NE(bad_exit.reason.find("did not exit 0"), std::string::npos) << bad_exit.reason;
}

TEST(SoakPrompt, Utf8PrefixNeverCutsACharacter) {
    EXPECT_EQ(utf8_prefix("abcdef", 3), "abc");
    EXPECT_EQ(utf8_prefix("ab", 3), "ab");
    const std::string text = "a\xc3\xa9\xe2\x82\xac";  // a, é (2 bytes), € (3 bytes)
    EXPECT_EQ(utf8_prefix(text, 1), "a");
    EXPECT_EQ(utf8_prefix(text, 2), "a");
    EXPECT_EQ(utf8_prefix(text, 3), "a\xc3\xa9");
    EXPECT_EQ(utf8_prefix(text, 5), "a\xc3\xa9");
    EXPECT_EQ(utf8_prefix(text, 6), text);
}

}  // namespace
