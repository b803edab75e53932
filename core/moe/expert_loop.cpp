// The reference backend: one expert at a time, on the rows routed (and kept) to it.
#include "core/moe/experts.h"

namespace moe {

torch::Tensor LoopExperts(const ExpertInput& in, const ExpertWeights& w) {
  const auto dt = in.x.scalar_type();
  const int64_t E = w.w1.size(0);
  torch::Tensor out = torch::zeros_like(in.x);  // (N, d)
  torch::Tensor active = in.keep;
  for (int64_t e = 0; e < E; ++e) {
    // (n_e, 2): (token, k-slot) of each kept assignment to e. Host sync: the loop's nature.
    torch::Tensor where = torch::nonzero(in.indices.eq(e).logical_and(active));
    if (where.size(0) == 0) continue;
    torch::Tensor tok = where.select(1, 0), slot = where.select(1, 1);
    torch::Tensor xe = in.x.index_select(0, tok);  // (n_e, d)
    torch::Tensor a = torch::matmul(xe, w.w1[e].to(dt));
    torch::Tensor b = w.w3.defined() ? torch::matmul(xe, w.w3[e].to(dt)) : torch::Tensor();
    torch::Tensor ye = torch::matmul(ExpertActivation(a, b), w.w2[e].to(dt));  // (n_e, d)
    torch::Tensor g = in.weights.index({tok, slot}).to(dt).unsqueeze(1);        // (n_e, 1)
    out = out.index_add(0, tok, ye * g);
  }
  return out;
}

}  // namespace moe
