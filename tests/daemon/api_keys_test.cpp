// Checks the API keys of the TCP listener (daemon/api_keys.h): a keys file with comments,
// blank lines and spaces yields exactly its keys; a file others can read or write, a missing
// one, an empty one and a bad key are refused with the file (and line) named and no key
// quoted; accepts() takes each key and nothing else (prefixes, extensions, case changes,
// the empty string); bearer_token() parses the Authorization header; the 401 body is the
// shape OpenAI's clients read. Files live in the test's temporary directory.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "daemon/api_keys.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

std::string write_keys(const std::string& name, const std::string& text, mode_t mode) {
    const std::string path = (test::temp_dir() / name).string();
    std::ofstream(path, std::ios::trunc) << text;
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
}

TEST(ApiKeys, FileWithCommentsAndBlankLines) {
    const std::string path =
        write_keys("keys-good", "# moed API keys\n\n  sk-first-key  \r\n\t# indented comment\nsk-second\n", 0600);
    auto keys = api_keys::load(path);
    ASSERT_TRUE(keys) << keys.error().message;
    EXPECT_EQ(keys->size(), 2u);
    EXPECT_TRUE(keys->accepts("sk-first-key"));
    EXPECT_TRUE(keys->accepts("sk-second"));
    for (const char* wrong : {"", "sk-first-ke", "sk-first-keyy", "SK-FIRST-KEY", "sk-secon", "# moed API keys",
                              " sk-second", "sk-second-key"})
        EXPECT_FALSE(keys->accepts(wrong)) << "'" << wrong << "'";
    // Group-readable is fine (a service group may share the file).
    ASSERT_TRUE(api_keys::load(write_keys("keys-group", "k1\n", 0640)));
}

TEST(ApiKeys, RefusedFilesNameTheFileAndTheReason) {
    const std::string readable = write_keys("keys-world", "sk-secret\n", 0644);
    auto r = api_keys::load(readable);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, "server.api_keys_file: '" + readable +
                                     "' is readable by other users (mode 0644); keys must be private: chmod o-rwx '" +
                                     readable + "'");
    EXPECT_EQ(r.error().message.find("sk-secret"), std::string::npos);
    const std::string writable = write_keys("keys-world-w", "sk-secret\n", 0602);
    auto w = api_keys::load(writable);
    ASSERT_FALSE(w);
    EXPECT_NE(w.error().message.find("is writable by other users (mode 0602)"), std::string::npos) << w.error().message;

    const std::string missing = (test::temp_dir() / "keys-missing").string();
    std::filesystem::remove(missing);
    auto m = api_keys::load(missing);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().message, "server.api_keys_file: cannot open '" + missing + "': No such file or directory");

    auto empty = api_keys::load(write_keys("keys-empty", "# nothing yet\n\n", 0600));
    ASSERT_FALSE(empty);
    EXPECT_NE(empty.error().message.find("holds no key"), std::string::npos);

    const std::string spaced = write_keys("keys-spaced", "ok\nsk with space\n", 0600);
    auto s = api_keys::load(spaced);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().message,
              "server.api_keys_file: " + spaced + ":2: a key must be printable ASCII without spaces");
    auto dir = api_keys::load(test::temp_dir().string());
    ASSERT_FALSE(dir);
    EXPECT_NE(dir.error().message.find("is not a regular file"), std::string::npos) << dir.error().message;
}

TEST(ApiKeys, BearerTokenParsing) {
    EXPECT_EQ(bearer_token("Bearer sk-1").value_or("?"), "sk-1");
    EXPECT_EQ(bearer_token("bearer   sk-1  ").value_or("?"), "sk-1");
    EXPECT_EQ(bearer_token("BEARER\tsk-1").value_or("?"), "sk-1");
    EXPECT_FALSE(bearer_token("Bearer"));
    EXPECT_FALSE(bearer_token("Bearer "));
    EXPECT_FALSE(bearer_token("Bearersk-1"));
    EXPECT_FALSE(bearer_token("Basic dXNlcjpwYXNz"));
    EXPECT_FALSE(bearer_token("sk-1"));
    EXPECT_FALSE(bearer_token(""));
}

TEST(ApiKeys, UnauthorizedBodyIsOpenAiShaped) {
    auto j = nlohmann::json::parse(invalid_api_key_body("Incorrect API key provided."));
    EXPECT_EQ(j["error"]["message"], "Incorrect API key provided.");
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_EQ(j["error"]["code"], "invalid_api_key");
    EXPECT_TRUE(j["error"]["param"].is_null());
    EXPECT_TRUE(api_keys::of({"a"}).accepts("a"));
    EXPECT_FALSE(api_keys{}.accepts(""));
}

}  // namespace
}  // namespace moed::daemon
