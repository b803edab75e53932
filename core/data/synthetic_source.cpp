// synthetic: uniform random tokens, the default for throughput runs (no I/O, no tokenizer).
// Every token is StreamAt(key, g*(T+1) + t) of a key hashed from (seed, stream, step, micro), with
// g = rank*B + b the row's index in the step's global batch,
// so a batch is a pure function of its coordinates: resume sees the same data, rows fill in
// parallel, and nothing is carried between steps. Validation uses its own stream tag.
#include <algorithm>
#include <memory>
#include <sstream>
#include <string>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "core/data/data_source.h"
#include "core/data/random.h"
#include "core/data/token_file.h"

namespace moe {

namespace {

class SyntheticSource : public DataSource {
 public:
  explicit SyntheticSource(const Config& cfg)
      : seed_(cfg.train.seed), vocab_(cfg.model.vocab_size), B_(cfg.train.batch_size), T_(cfg.model.seq_len) {}

  // Rank r reads rows [r*B, (r+1)*B) of the step's global batch (data_source.h).
  Batch TrainBatch(int64_t step, int64_t micro, int64_t rank, int64_t /*world*/) override {
    return Fill(data::StreamKey({seed_, data::kTrainStream, step, micro, 0}), rank * B_);
  }

  Batch ValBatch(int64_t i, int64_t rank, int64_t /*world*/) override {
    return Fill(data::StreamKey({seed_, data::kValStream, i}), rank * B_);
  }

  std::string Describe() const override {
    std::ostringstream os;
    os << "synthetic: uniform random tokens in [0, " << vocab_ << "), seed " << seed_;
    return os.str();
  }

 private:
  // Row b is T+1 consecutive stream values from row row0 + b on: inputs the first T, targets the
  // last T.
  Batch Fill(uint64_t key, int64_t row0) const {
    torch::Tensor inputs = torch::empty({B_, T_}, torch::kInt64);   // (B, T)
    torch::Tensor targets = torch::empty({B_, T_}, torch::kInt64);  // (B, T)
    int64_t* in = inputs.data_ptr<int64_t>();
    int64_t* tg = targets.data_ptr<int64_t>();
    const int64_t T = T_, vocab = vocab_;
    // ~5 ns a token: split only when a batch is large enough to pay for the threads.
    const int64_t grain = std::max<int64_t>(1, 16384 / (T + 1));
    at::parallel_for(0, B_, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const uint64_t base = static_cast<uint64_t>((row0 + b) * (T + 1));
        for (int64_t t = 0; t <= T; ++t) {
          const int64_t tok = data::Below(data::StreamAt(key, base + t), vocab);
          if (t < T) in[b * T + t] = tok;
          if (t > 0) tg[b * T + t - 1] = tok;
        }
      }
    });
    return Batch{inputs, targets};
  }

  int64_t seed_;
  int64_t vocab_;
  int64_t B_;
  int64_t T_;
};

}  // namespace

Status OpenSyntheticSource(const Config& cfg, std::unique_ptr<DataSource>* out) {
  out->reset(new SyntheticSource(cfg));
  return Status::OK();
}

}  // namespace moe
