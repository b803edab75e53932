// A differentiable all-to-all of rows: the token exchange of expert parallelism.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "core/dist/communicator.h"

namespace moe {

// x (sum(send), ...) goes out in blocks of send[r] rows to rank r of `comm`; returns
// (sum(recv), ...) with recv[r] rows from rank r, in rank order. The backward pass is the same
// exchange the other way (gradients of the received rows go back to the ranks they came from).
// Collective over `comm` in forward and in backward; `comm` must outlive the autograd graph.
torch::Tensor AllToAllRows(const torch::Tensor& x, const std::vector<int64_t>& send,
                           const std::vector<int64_t>& recv, Communicator* comm);

}  // namespace moe
