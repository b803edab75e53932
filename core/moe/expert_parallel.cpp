#include "core/moe/expert_parallel.h"

#include <vector>

#include "core/dist/all_to_all.h"
#include "core/moe/permute.h"

namespace moe {

namespace {

// With a capacity C every expert gets exactly C slots from every rank, kept assignments in their
// capacity position and zeros elsewhere, so every shape and split is known without looking at
// the routing: no host sync, at the cost of computing the empty slots (a zero row stays zero
// through relu^2 and SwiGLU and adds nothing to any gradient).
torch::Tensor StaticCapacityExchange(const ExpertInput& in, const ExpertWeights& w, int64_t E, Communicator* ep) {
  const int64_t d = in.x.size(1), C = in.capacity;
  const int64_t P = ep->size(), L = E / P;
  const SlotOrder order = MakeSlotOrder(in.indices, in.keep, in.position, C, E);
  torch::Tensor send = PermuteToSlots(in.x, order);                                   // (E*C, d) by (rank, l, c)
  const std::vector<int64_t> splits(P, L * C);
  torch::Tensor recv = AllToAllRows(send, splits, splits, ep);                        // (P*L*C, d) by (q, l, c)
  torch::Tensor xg = recv.view({P, L, C, d}).transpose(0, 1).reshape({L * P * C, d});  // by (l, q, c)
  torch::Tensor offs = (torch::arange(1, L + 1, order.slot.options()) * (P * C)).to(torch::kInt32);
  torch::Tensor yg = GroupedFfn(xg, offs, w);                                          // (L*P*C, d)
  torch::Tensor back = yg.view({L, P, C, d}).transpose(0, 1).reshape({P * L * C, d});  // by (q, l, c)
  torch::Tensor ys = AllToAllRows(back, splits, splits, ep);                          // (E*C, d) by slot
  return UnpermuteFromSlots(ys, in.weights * in.keep, order);                          // (N, d)
}

}  // namespace

torch::Tensor ExpertParallelExperts(const ExpertInput& in, const ExpertWeights& w, int64_t n_experts,
                                    Communicator* ep) {
  const int64_t k = in.indices.size(1);
  const int64_t P = ep->size(), E = n_experts, L = E / P;
  TORCH_CHECK(L * P == E && w.w1.size(0) == L, "ExpertParallelExperts: ", E, " experts over ", P,
              " ranks, local weights for ", w.w1.size(0));
  if (in.capacity > 0) return StaticCapacityExchange(in, w, E, ep);

  // 1. This rank's kept assignments grouped by expert, hence by owning rank (dropped ones last),
  // from their capacity positions (no sort).
  torch::Tensor dest = ExpertRowDest(in.indices, in.keep, in.position, in.kept);  // (N*k,)

  // 2. Row counts: recv[q*L + l] = rows rank q sends for my local expert l.
  torch::Tensor sent = in.kept.to(torch::kInt64).contiguous();  // (E,)
  torch::Tensor recv = torch::empty_like(sent);                 // (P*L,)
  ep->AllToAll(recv, sent, std::vector<int64_t>(P, L), std::vector<int64_t>(P, L));
  torch::Tensor host = torch::cat({sent, recv}).to(torch::kCPU);  // the one host sync
  const int64_t* hs = host.data_ptr<int64_t>();
  const int64_t* hr = hs + E;
  std::vector<int64_t> send_rows(P, 0), recv_rows(P, 0), local_rows(L, 0);
  for (int64_t q = 0; q < P; ++q) {
    for (int64_t l = 0; l < L; ++l) {
      send_rows[q] += hs[q * L + l];
      recv_rows[q] += hr[q * L + l];
      local_rows[l] += hr[q * L + l];
    }
  }
  int64_t m_send = 0, m_recv = 0;
  for (int64_t q = 0; q < P; ++q) m_send += send_rows[q], m_recv += recv_rows[q];

  // 3. Dispatch: rows leave grouped by (destination rank, its expert) and arrive grouped by
  // (source rank, local expert); regroup them by local expert for the grouped GEMM.
  const RowOrder order = MakeRowOrder(dest, m_send, k);
  torch::Tensor xs = PermuteTokens(in.x, order);                        // (m_send, d)
  torch::Tensor xr = AllToAllRows(xs, send_rows, recv_rows, ep);        // (m_recv, d) by (q, l)
  torch::Tensor by_expert = torch::empty({m_recv}, torch::kInt64);     // row of xr for each grouped row
  {
    std::vector<int64_t> start(P * L);  // first row of block (q, l) in xr
    int64_t r = 0;
    for (int64_t q = 0; q < P; ++q)
      for (int64_t l = 0; l < L; ++l) start[q * L + l] = r, r += hr[q * L + l];
    int64_t* out = by_expert.data_ptr<int64_t>();
    int64_t i = 0;
    for (int64_t l = 0; l < L; ++l)
      for (int64_t q = 0; q < P; ++q)
        for (int64_t j = 0; j < hr[q * L + l]; ++j) out[i++] = start[q * L + l] + j;
  }
  torch::Tensor perm = by_expert.to(in.x.device(), /*non_blocking=*/true);
  torch::Tensor inv = torch::empty_like(perm).scatter_(0, perm, torch::arange(m_recv, perm.options()));

  // 4. The local experts.
  torch::Tensor yr;  // (m_recv, d) in xr's row order
  if (m_recv > 0) {
    torch::Tensor offs = torch::tensor(local_rows, torch::kInt64).cumsum(0).to(torch::kInt32).to(in.x.device());
    torch::Tensor yg = GroupedFfn(PermuteRowsExact(xr, perm, inv), offs, w);  // (m_recv, d) by local expert
    yr = PermuteRowsExact(yg, inv, perm);
  } else {
    // Nothing arrived, but the exchanges must still run in backward on every rank (they are
    // collective): keep the graph connected through the empty rows.
    yr = xr;
  }

  // 5. Combine: results go back where their rows came from, then weighted into each token.
  torch::Tensor ys = AllToAllRows(yr, recv_rows, send_rows, ep);  // (m_send, d) in `order`
  torch::Tensor wk = in.weights * in.keep;                         // (N, k)
  return UnpermuteTokens(ys, wk, order);                           // (N, d)
}

}  // namespace moe
