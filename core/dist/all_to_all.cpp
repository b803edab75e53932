#include "core/dist/all_to_all.h"

#include <numeric>

namespace moe {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::Tensor Exchange(const torch::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                       Communicator* comm) {
  const int64_t rows = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = rows;
  torch::Tensor out = torch::empty(shape, x.options());
  comm->AllToAll(out, x.contiguous(), recv, send);
  return out;
}

struct AllToAllFn : public torch::autograd::Function<AllToAllFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, std::vector<int64_t> send,
                               std::vector<int64_t> recv, int64_t comm_ptr) {
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    // The communicator is not an IValue; the graph keeps its address (the contract above says
    // the communicator outlives the graph).
    ctx->saved_data["comm"] = comm_ptr;
    return Exchange(x, send, recv, reinterpret_cast<Communicator*>(comm_ptr));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
    const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    return {Exchange(grads[0], recv, send, comm), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor AllToAllRows(const torch::Tensor& x, const std::vector<int64_t>& send,
                           const std::vector<int64_t>& recv, Communicator* comm) {
  TORCH_CHECK(static_cast<int>(send.size()) == comm->size() && static_cast<int>(recv.size()) == comm->size(),
              "AllToAllRows: one split per rank expected");
  return AllToAllFn::apply(x, send, recv, static_cast<int64_t>(reinterpret_cast<intptr_t>(comm)));
}

}  // namespace moe
