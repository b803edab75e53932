#include "core/moe/experts.h"

namespace moe {

bool GroupedMmSupported(int64_t d, int64_t h, torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16) return false;
  const int64_t align = 16 / static_cast<int64_t>(c10::elementSize(dtype));
  return d % align == 0 && h % align == 0;
}

Status ResolveExpertImpl(const std::string& name, int64_t d, int64_t h, torch::ScalarType dtype,
                         ExpertImpl* out) {
  if (name == "loop") {
    *out = ExpertImpl::kLoop;
  } else if (name == "padded") {
    *out = ExpertImpl::kPadded;
  } else if (name == "grouped" || name == "auto") {
    if (GroupedMmSupported(d, h, dtype)) {
      *out = ExpertImpl::kGrouped;
    } else if (name == "auto") {
      *out = ExpertImpl::kPadded;
    } else {
      return Status::Unsupported("moe.impl = \"grouped\": at::_grouped_mm needs fp32/bf16 and n_embd (" +
                                 std::to_string(d) + ") and expert hidden (" + std::to_string(h) +
                                 ") multiples of 16 bytes; use padded or loop");
    }
  } else {
    return Status::InvalidArgument("moe.impl = \"" + name + "\": expected auto | loop | padded | grouped");
  }
  return Status::OK();
}

const char* ExpertImplName(ExpertImpl impl) {
  switch (impl) {
    case ExpertImpl::kLoop: return "loop";
    case ExpertImpl::kPadded: return "padded";
    case ExpertImpl::kGrouped: return "grouped";
  }
  return "?";
}

torch::Tensor RunExperts(ExpertImpl impl, const ExpertInput& in, const ExpertWeights& w) {
  switch (impl) {
    case ExpertImpl::kLoop: return LoopExperts(in, w);
    case ExpertImpl::kPadded: return PaddedExperts(in, w);
    case ExpertImpl::kGrouped: return GroupedExperts(in, w);
  }
  TORCH_CHECK(false, "unknown expert backend");
}

}  // namespace moe
