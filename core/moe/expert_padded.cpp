// Padded backend: every expert gets C rows of an (E, C, d) buffer, filled by scatter and
// processed by batched matmuls. Rows beyond an expert's load stay zero (wasted FLOPs, the
// price of static shapes).
#include "core/moe/experts.h"

namespace moe {

torch::Tensor PaddedExperts(const ExpertInput& in, const ExpertWeights& w) {
  const auto dt = in.x.scalar_type();
  const int64_t N = in.x.size(0), d = in.x.size(1), k = in.indices.size(1);
  const int64_t E = w.w1.size(0);
  // Dropless: the buffer must fit the busiest expert (one host sync).
  const int64_t C = in.capacity > 0 ? in.capacity : std::max<int64_t>(1, in.kept.max().item<int64_t>());
  // Destination row of each assignment in the flattened (E*C + 1, d) buffer; dropped assignments
  // all go to the extra last row, which is discarded (keeps the shapes data-independent).
  torch::Tensor dest = (in.indices * C + in.position).masked_fill(in.keep.logical_not(), E * C).reshape({N * k});
  torch::Tensor xk = in.x.unsqueeze(1).expand({N, k, d}).reshape({N * k, d});  // (N*k, d), (token, slot) order
  torch::Tensor buf = torch::zeros({E * C + 1, d}, in.x.options()).index_add(0, dest, xk);
  torch::Tensor xb = buf.narrow(0, 0, E * C).view({E, C, d});                  // (E, C, d)
  torch::Tensor a = torch::bmm(xb, w.w1.to(dt));                                // (E, C, h)
  torch::Tensor b = w.w3.defined() ? torch::bmm(xb, w.w3.to(dt)) : torch::Tensor();
  torch::Tensor yb = torch::bmm(ExpertActivation(a, b), w.w2.to(dt));           // (E, C, d)
  // Gather each assignment's row back (the discard row reads zeros) and combine over k.
  torch::Tensor y = torch::cat({yb.reshape({E * C, d}), torch::zeros({1, d}, yb.options())}, 0);
  torch::Tensor g = (in.weights * in.keep).to(dt).reshape({N * k, 1});          // (N*k, 1)
  return (y.index_select(0, dest) * g).view({N, k, d}).sum(1);                  // (N, d)
}

}  // namespace moe
