#include "core/model/rms_norm.h"

namespace moe {

torch::Tensor RmsNorm(const torch::Tensor& x) {
  return at::rms_norm(x, {x.size(-1)});
}

}  // namespace moe
