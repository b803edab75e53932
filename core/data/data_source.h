// Token sources for training and validation. A source is stateless in the step: batch(step,
// micro) always returns the same tokens for the same (seed, step, micro), so a resumed run sees
// exactly the data an uninterrupted run would (the "data position" in a checkpoint is the step).
//
// Sources (cfg.data.source):
//   synthetic  uniform random tokens in [0, model.vocab_size); nothing is read.
//   bin        flat little-endian uint16 token file (nanoGPT prepare.py), memory-mapped.
//   text       any file as raw bytes (vocabulary 256).
// bin and text hold out the last data.val_frac of the file for validation and draw training
// windows at random offsets from the rest; see core/data/token_file.h for the exact scheme.
// Randomness is a counter-based hash of (train.seed, step, micro) and the global row, see
// core/data/random.h.
//
// Threads: TrainBatch and ValBatch may be called concurrently from different threads (the
// trainer makes the next step's batches on a background thread, core/data/prefetch.h, while it
// runs validation). A source therefore keeps no mutable state and draws no numbers from torch's
// global generator; the batch's own tensors are new on every call.
#pragma once

#include <memory>
#include <string>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/util/status.h"

namespace moe {

struct Batch {
  torch::Tensor inputs;   // (B, T) int64 on the CPU
  torch::Tensor targets;  // (B, T) int64: inputs shifted by one token
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  // Training micro-batch `micro` of optimizer step `step` (0-based), for data-parallel `rank` of
  // `world`. Each step has one global batch of unbounded rows, a pure function of (seed, step,
  // micro); rank r reads its rows [r*B, (r+1)*B) (B = train.batch_size), so ranks read disjoint
  // shards, and W ranks of batch B together read exactly what one rank of batch W*B reads (the
  // data-parallel equality tests rely on this). Rank 0 reads what a one-rank run reads.
  // Throws std::runtime_error for a token id >= model.vocab_size in a bin file that was too large
  // to check on open (a corrupt corpus is not a state a training step can recover from).
  virtual Batch TrainBatch(int64_t step, int64_t micro, int64_t rank = 0, int64_t world = 1) = 0;
  // Validation micro-batch `i` from the held-out split (synthetic: a separate random stream),
  // sharded like TrainBatch: rank r of `world` reads rows [r*B, (r+1)*B) of validation batch i
  // of a W*B-row rank 0, so W ranks together score what one process of batch W*B scores.
  // bin/text: fixed windows of the held-out tail, independent of train.seed, so runs with
  // different seeds are scored on the same tokens; i past the end wraps around.
  virtual Batch ValBatch(int64_t i, int64_t rank = 0, int64_t world = 1) = 0;
  // Human description for logs and summary.json ("text: data/shakespeare.txt (1.1M tokens, 10% held out)").
  virtual std::string Describe() const = 0;
};

// Opens the source named by cfg.data for batches of (train.batch_size, model.seq_len).
// Missing or too-small files give NotFound / InvalidArgument naming data.path (and the sizes);
// "too small" means either split holds less than one window of model.seq_len + 1 tokens. A bin
// file with a token id >= model.vocab_size is InvalidArgument naming data.path, the id, its
// position and model.vocab_size (checked on open for files up to 1 GiB, else per batch).
Status OpenDataSource(const Config& cfg, std::unique_ptr<DataSource>* out);

}  // namespace moe
