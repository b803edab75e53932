// Wall-clock time as the store records it and the reports print it.
#pragma once

#include <chrono>

namespace moe {

// Seconds since the Unix epoch (the system clock, fractional).
inline double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace moe
