// SHA-256 of a file, as `sha256sum` prints it (64 lowercase hex digits). Golden files record
// the digest of the model llama.cpp ran, so a test can tell a model that changed under it
// (a synthesizer that no longer writes the same bytes) from a numerical difference.
#pragma once

#include <string>

namespace moed::test {

// The digest of the file at `path`; empty when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace moed::test
