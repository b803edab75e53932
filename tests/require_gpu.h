// The one "skip without a GPU" check of the test binaries: a test case that needs CUDA starts
// with MOE_REQUIRE_GPU_OR_SKIP(); where no GPU is visible (CI, the CPU machines) it warns and
// returns, so the case passes with a message instead of failing.
#pragma once

#include <catch2/catch.hpp>

#include <torch/cuda.h>

#define MOE_REQUIRE_GPU_OR_SKIP()                      \
  do {                                                 \
    if (!torch::cuda::is_available()) {                \
      WARN("skipped: no CUDA GPU");                    \
      return;                                          \
    }                                                  \
  } while (0)
