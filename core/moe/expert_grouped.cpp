// Grouped backend: assignments sorted by expert so each expert's rows are contiguous, then one
// at::_grouped_mm per projection with int32 cumulative row offsets (offs[e] = end of expert e).
#include "core/moe/experts.h"

namespace moe {

torch::Tensor GroupedExperts(const ExpertInput& in, const ExpertWeights& w) {
  const auto dt = in.x.scalar_type();
  const int64_t N = in.x.size(0), k = in.indices.size(1);
  const int64_t E = w.w1.size(0);
  // Dropped assignments get key E so that the stable sort puts them after every kept row.
  torch::Tensor key = in.indices.masked_fill(in.keep.logical_not(), E).reshape({N * k});
  torch::Tensor order = std::get<1>(key.sort(std::optional<bool>(true), /*dim=*/0, /*descending=*/false));  // (N*k,) stable
  // _grouped_mm leaves rows past offs[E-1] unwritten, so only the kept rows may be passed.
  // Dropless, that is all N*k (no sync); with a capacity the count is data-dependent.
  const int64_t M = in.capacity > 0 ? in.kept.sum().item<int64_t>() : N * k;
  order = order.narrow(0, 0, M);
  torch::Tensor tok = order.div(k, "floor");                      // (M,) token of each row
  torch::Tensor offs = in.kept.cumsum(0).to(torch::kInt32);       // (E,)
  torch::Tensor xs = in.x.index_select(0, tok);                   // (M, d)
  torch::Tensor a = at::_grouped_mm(xs, w.w1.to(dt), offs);       // (M, h)
  torch::Tensor b = w.w3.defined() ? at::_grouped_mm(xs, w.w3.to(dt), offs) : torch::Tensor();
  torch::Tensor ys = at::_grouped_mm(ExpertActivation(a, b), w.w2.to(dt), offs);  // (M, d)
  torch::Tensor g = in.weights.reshape({N * k}).index_select(0, order).to(dt).unsqueeze(1);  // (M, 1)
  return torch::zeros_like(in.x).index_add(0, tok, ys * g);      // (N, d)
}

}  // namespace moe
