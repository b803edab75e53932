// Precompiled header for targets that use LibTorch (see core/CMakeLists.txt). Only heavy,
// stable third-party headers belong here; never project headers.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>
