#include "core/util/fnv1a.h"

#include <cstdint>
#include <cstdio>

namespace moe {

std::string Fnv1aHex(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;  // offset basis
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;  // FNV prime
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace moe
