// Parameterless RMSNorm over the last dimension, as in the reference peer (F.rms_norm without a
// weight). Keeping it gain-free is part of the architecture: there are no norm parameters to
// count, decay or checkpoint.
#pragma once

#include <torch/torch.h>

namespace moe {

// x / sqrt(mean(x^2, -1) + eps), eps = the dtype's machine epsilon (ATen's default, as in
// PyTorch's F.rms_norm(x, (x.size(-1),))). Same shape and dtype as x.
torch::Tensor RmsNorm(const torch::Tensor& x);

}  // namespace moe
