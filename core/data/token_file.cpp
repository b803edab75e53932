#include "core/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <torch/torch.h>

#include "core/data/random.h"

namespace moe {
namespace data {

namespace {

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Closes a file descriptor on scope exit (the mapping outlives it).
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

Status MappedFile::Open(const std::string& path, const std::string& key, std::unique_ptr<MappedFile>* out,
                        int64_t copy_below_bytes) {
  const std::string where = key + " = " + Quote(path);
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) {
    int err = errno;
    if (err == ENOENT) return Status::NotFound(where + ": no such file");
    return Status::IOError(where + ": cannot open: " + std::strerror(err));
  }
  struct stat st;
  if (::fstat(fd.fd, &st) != 0) return Status::IOError(where + ": cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(where + ": not a regular file");
  const int64_t size = static_cast<int64_t>(st.st_size);
  if (size == 0) {
    out->reset(new MappedFile(nullptr, 0, /*mapped=*/false));
    return Status::OK();
  }
  if (size <= copy_below_bytes) {
    std::unique_ptr<MappedFile> f(new MappedFile(nullptr, size, /*mapped=*/false));
    f->copy_.resize(static_cast<size_t>(size));
    for (int64_t done = 0; done < size;) {
      const ssize_t n = ::read(fd.fd, f->copy_.data() + done, static_cast<size_t>(size - done));
      if (n <= 0) return Status::IOError(where + ": cannot read: " + (n == 0 ? "file shrank" : std::strerror(errno)));
      done += n;
    }
    f->data_ = f->copy_.data();
    *out = std::move(f);
    return Status::OK();
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (p == MAP_FAILED) return Status::IOError(where + ": cannot mmap: " + std::strerror(errno));
  // Training windows are read at random offsets: read-ahead of whole neighbourhoods is waste.
  ::madvise(p, static_cast<size_t>(size), MADV_RANDOM);
  out->reset(new MappedFile(static_cast<const uint8_t*>(p), size, /*mapped=*/true));
  return Status::OK();
}

MappedFile::~MappedFile() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
}

std::string HumanCount(int64_t n) {
  char buf[32];
  if (n >= 1000000000) {
    std::snprintf(buf, sizeof(buf), "%.1fB", n / 1e9);
  } else if (n >= 1000000) {
    std::snprintf(buf, sizeof(buf), "%.1fM", n / 1e6);
  } else if (n >= 1000) {
    std::snprintf(buf, sizeof(buf), "%.1fK", n / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(n));
  }
  return buf;
}

Batch GatherWindows(const TokenSpan& span, const std::vector<int64_t>& offsets, int64_t T,
                    int64_t check_vocab, const std::string& what) {
  const int64_t B = static_cast<int64_t>(offsets.size());
  torch::Tensor inputs = torch::empty({B, T}, torch::kInt64);   // (B, T)
  torch::Tensor targets = torch::empty({B, T}, torch::kInt64);  // (B, T)
  int64_t* in = inputs.data_ptr<int64_t>();
  int64_t* tg = targets.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t off = offsets[b];
    if (off < 0 || off + T + 1 > span.n) {
      throw std::out_of_range("GatherWindows: window [" + std::to_string(off) + ", " +
                              std::to_string(off + T + 1) + ") outside " + std::to_string(span.n) +
                              " tokens");
    }
    for (int64_t t = 0; t <= T; ++t) {
      const int64_t tok = span.At(off + t);
      if (check_vocab > 0 && tok >= check_vocab) {
        throw std::runtime_error(what + ": token id " + std::to_string(tok) + " at position " +
                                 std::to_string(off + t) + " is >= model.vocab_size = " +
                                 std::to_string(check_vocab));
      }
      if (t < T) in[b * T + t] = tok;
      if (t > 0) tg[b * T + t - 1] = tok;
    }
  }
  return Batch{inputs, targets};
}

namespace {

class TokenFileSource : public DataSource {
 public:
  TokenFileSource(std::unique_ptr<MappedFile> file, const Config& cfg, const TokenFileOptions& opts,
                  int64_t n_train, bool checked_on_open)
      : file_(std::move(file)),
        kind_(opts.kind),
        path_(cfg.data.path),
        val_frac_(cfg.data.val_frac),
        seed_(cfg.train.seed),
        B_(cfg.train.batch_size),
        T_(cfg.model.seq_len),
        check_vocab_(checked_on_open ? 0 : cfg.model.vocab_size),
        span_{file_->data(), file_->size() / opts.width, opts.width},
        n_train_(n_train),
        n_val_windows_((span_.n - n_train - 1) / T_) {}

  // Rank r reads rows [r*B, (r+1)*B) of the step's global batch (data_source.h).
  Batch TrainBatch(int64_t step, int64_t micro, int64_t rank, int64_t /*world*/) override {
    const uint64_t key = StreamKey({seed_, kTrainStream, step, micro, 0});
    std::vector<int64_t> offsets(B_);
    for (int64_t b = 0; b < B_; ++b) offsets[b] = Below(StreamAt(key, rank * B_ + b), n_train_ - T_);
    return GatherWindows(span_, offsets, T_, check_vocab_, "data.path = " + Quote(path_));
  }

  Batch ValBatch(int64_t i, int64_t rank, int64_t world) override {
    std::vector<int64_t> offsets(B_);
    const int64_t first = i * world * B_ + rank * B_;  // row 0 of this rank in the global batch
    for (int64_t b = 0; b < B_; ++b) offsets[b] = n_train_ + ((first + b) % n_val_windows_) * T_;
    return GatherWindows(span_, offsets, T_, check_vocab_, "data.path = " + Quote(path_));
  }

  std::string Describe() const override {
    std::ostringstream os;
    os << kind_ << ": " << path_ << " (" << HumanCount(span_.n) << (span_.n == 1 ? " token, " : " tokens, ")
       << HumanCount(span_.n - n_train_) << " (" << val_frac_ * 100 << "%) held out)";
    return os.str();
  }

 private:
  std::unique_ptr<MappedFile> file_;
  std::string kind_;
  std::string path_;
  double val_frac_;
  int64_t seed_;
  int64_t B_;
  int64_t T_;
  int64_t check_vocab_;  // 0 when the whole file was scanned on open
  TokenSpan span_;
  int64_t n_train_;
  int64_t n_val_windows_;
};

// First position of a token >= vocab, or -1. Chunked so that a clean file costs one pass of a
// branch-free max (which the compiler vectorises) and the position search runs only on a hit.
int64_t FindTokenAtLeast(const TokenSpan& span, int64_t vocab) {
  constexpr int64_t kChunk = int64_t{1} << 20;
  for (int64_t lo = 0; lo < span.n; lo += kChunk) {
    const int64_t hi = std::min(span.n, lo + kChunk);
    int64_t mx = 0;
    for (int64_t i = lo; i < hi; ++i) mx = std::max(mx, span.At(i));
    if (mx < vocab) continue;
    for (int64_t i = lo; i < hi; ++i) {
      if (span.At(i) >= vocab) return i;
    }
  }
  return -1;
}

}  // namespace

Status OpenTokenFileSource(const Config& cfg, const TokenFileOptions& opts,
                           std::unique_ptr<DataSource>* out) {
  const std::string& path = cfg.data.path;
  const std::string where = "data.path = " + Quote(path);
  if (path.empty()) {
    return Status::InvalidArgument("data.path is empty: data.source = " + opts.kind + " needs a file");
  }
  std::unique_ptr<MappedFile> file;
  MOE_RETURN_IF_ERROR(MappedFile::Open(path, "data.path", &file));

  if (file->size() % opts.width != 0) {
    return Status::InvalidArgument(where + ": " + std::to_string(file->size()) +
                                   " bytes is not a whole number of " + std::to_string(opts.width) +
                                   "-byte tokens");
  }
  const TokenSpan span{file->data(), file->size() / opts.width, opts.width};
  const int64_t T = cfg.model.seq_len;
  const int64_t n_val = static_cast<int64_t>(static_cast<double>(span.n) * cfg.data.val_frac);
  const int64_t n_train = span.n - n_val;
  if (n_train < T + 1 || n_val < T + 1) {
    std::ostringstream os;
    os << where << ": " << span.n << " tokens (" << file->size() << " bytes) with data.val_frac = "
       << cfg.data.val_frac << " split into " << n_train << " training and " << n_val
       << " validation tokens; each split needs at least one window of model.seq_len + 1 = " << T + 1
       << " tokens";
    return Status::InvalidArgument(os.str());
  }

  const int64_t vocab = cfg.model.vocab_size;
  const int64_t max_id = (int64_t{1} << (8 * opts.width)) - 1;
  bool checked = max_id < vocab;  // every representable id fits: nothing to check
  if (!checked && file->size() <= opts.scan_limit_bytes) {
    const int64_t pos = FindTokenAtLeast(span, vocab);
    if (pos >= 0) {
      return Status::InvalidArgument(where + ": token id " + std::to_string(span.At(pos)) +
                                     " at position " + std::to_string(pos) +
                                     " is >= model.vocab_size = " + std::to_string(vocab));
    }
    checked = true;
  }
  out->reset(new TokenFileSource(std::move(file), cfg, opts, n_train, checked));
  return Status::OK();
}

}  // namespace data
}  // namespace moe
