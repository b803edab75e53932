// Internal to core/data: what the bin and text sources share. A token file is a flat array of
// little-endian unsigned tokens of `width` bytes (bin: 2, uint16 as written by nanoGPT's
// prepare.py; text: 1, raw bytes), memory-mapped read-only. Its last val_frac of tokens is held
// out for validation and the rest is for training:
//
//   [0, n_train)   training:   row b of TrainBatch(step, micro, rank) is the window at offset
//                              Below(StreamAt(StreamKey({seed, kTrainStream, step, micro, 0}),
//                                             rank*B + b), n_train - T)
//                              so every training window lies wholly in the training split.
//   [n_train, n)   validation: fixed windows at offsets n_train + k*T, k in [0, (n_val-1)/T);
//                              ValBatch(i, rank, world) row b is window (i*W*B + rank*B + b) mod
//                              count (W = world; one rank: (i*B + b) mod count). Independent of the
//                              seed, so runs with different seeds are scored on the same tokens.
//
// with n_val = floor(n * val_frac) and a window = T+1 consecutive tokens (inputs = the first T,
// targets = the last T).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config/config.h"
#include "core/data/data_source.h"
#include "core/util/status.h"

namespace moe {
namespace data {

// A whole file, read-only: files up to kCopyBelowBytes are copied into memory, larger ones are
// memory-mapped (unmapped on destruction). An empty file gives data() == nullptr, size() == 0.
// Why copy small files: a mapping faults (SIGBUS) when the file is truncated while a run reads
// it, e.g. a text file edited during a sweep; a large token file is not edited in place, and
// copying it would cost its size in RAM per run.
class MappedFile {
 public:
  static constexpr int64_t kCopyBelowBytes = int64_t{64} << 20;

  // NotFound if `path` does not exist, IOError if it cannot be opened or mapped. `key` names the
  // setting the path came from ("data.path") for the messages.
  // `copy_below_bytes` is for tests of the mapped path.
  static Status Open(const std::string& path, const std::string& key, std::unique_ptr<MappedFile>* out,
                     int64_t copy_below_bytes = kCopyBelowBytes);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  MappedFile(const uint8_t* data, int64_t size, bool mapped) : data_(data), size_(size), mapped_(mapped) {}
  const uint8_t* data_;
  int64_t size_;
  bool mapped_;
  std::vector<uint8_t> copy_;  // the bytes of a small file (data_ points here)
};

// A view of `n` little-endian unsigned tokens of `width` (1 or 2) bytes.
struct TokenSpan {
  const uint8_t* bytes = nullptr;
  int64_t n = 0;
  int width = 2;

  int64_t At(int64_t i) const {
    const uint8_t* p = bytes + i * width;
    return width == 1 ? p[0] : (static_cast<int64_t>(p[0]) | (static_cast<int64_t>(p[1]) << 8));
  }
};

// The windowing helper shared by bin and text: row b of the result is tokens
// [offsets[b], offsets[b] + T + 1) of `span`, split into inputs (B, T) and targets (B, T), int64 on
// the CPU. Every offset must satisfy 0 <= offset && offset + T + 1 <= span.n. With
// `check_vocab` > 0, a token >= check_vocab throws std::runtime_error naming `what` (the file),
// its position and the vocabulary: the per-batch check for files too large to scan on open.
Batch GatherWindows(const TokenSpan& span, const std::vector<int64_t>& offsets, int64_t T,
                    int64_t check_vocab, const std::string& what);

struct TokenFileOptions {
  std::string kind;               // "bin" or "text": for Describe() and messages
  int width = 2;                  // bytes per token
  // Files up to this size are scanned on open for token ids >= model.vocab_size; larger files
  // are checked per batch instead (a full scan of a 20 GB corpus would stall every start).
  int64_t scan_limit_bytes = int64_t{1} << 30;
};

// Opens cfg.data.path as a token file (see the top of this header for the split and windows).
// NotFound if missing; InvalidArgument, naming data.path and the sizes, if the file is not a whole
// number of tokens or either split is shorter than one window of model.seq_len + 1 tokens; and
// InvalidArgument naming data.path, the position, the id and model.vocab_size for a token id
// >= model.vocab_size (on open for files up to scan_limit_bytes).
Status OpenTokenFileSource(const Config& cfg, const TokenFileOptions& opts,
                           std::unique_ptr<DataSource>* out);

// "1.2M", "345.6K", "999": token counts for Describe().
std::string HumanCount(int64_t n);

}  // namespace data

// The three sources (one file each); OpenDataSource picks by cfg.data.source.
Status OpenSyntheticSource(const Config& cfg, std::unique_ptr<DataSource>* out);
Status OpenBinSource(const Config& cfg, std::unique_ptr<DataSource>* out);
Status OpenTextSource(const Config& cfg, std::unique_ptr<DataSource>* out);

}  // namespace moe
