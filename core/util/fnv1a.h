// FNV-1a 64-bit hash of a byte string as 16 lower-case hex digits: stable across platforms, runs
// and builds, so it can name what is stored (a sweep's grid and plan, a checkpoint's config).
// Not for security.
#pragma once

#include <string>

namespace moe {

std::string Fnv1aHex(const std::string& bytes);

}  // namespace moe
