#include "core/data/prefetch.h"

#include <utility>

namespace moe {

BatchPrefetcher::BatchPrefetcher(DataSource& source, const PrefetchOptions& opts)
    : source_(source), opts_(opts), worker_([this] { Work(); }) {}

BatchPrefetcher::~BatchPrefetcher() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

std::vector<Batch> BatchPrefetcher::Make(int64_t step) {
  std::vector<Batch> out;
  out.reserve(static_cast<size_t>(opts_.micro_batches));
  for (int64_t micro = 0; micro < opts_.micro_batches; ++micro) {
    Batch b = source_.TrainBatch(step, micro, opts_.rank, opts_.world);
    if (opts_.pin_memory) {
      b.inputs = b.inputs.pin_memory();
      b.targets = b.targets.pin_memory();
    }
    out.push_back(std::move(b));
  }
  return out;
}

void BatchPrefetcher::Work() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || request_ >= 0; });
    if (stop_) return;
    const int64_t step = request_;
    request_ = -1;
    lk.unlock();
    std::vector<Batch> batches;
    std::exception_ptr error;
    try {
      batches = Make(step);
    } catch (...) {
      error = std::current_exception();
    }
    lk.lock();
    // The caller may have moved on (a jump): then the slot is for another step and this is dropped.
    if (slot_step_ == step && !slot_ready_) {
      slot_ = std::move(batches);
      slot_error_ = error;
      slot_ready_ = true;
      cv_.notify_all();
    }
  }
}

std::vector<Batch> BatchPrefetcher::Take(int64_t step) {
  std::vector<Batch> batches;
  std::exception_ptr error;
  bool hit = false;
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (slot_step_ == step) {
      cv_.wait(lk, [&] { return slot_ready_; });
      batches = std::move(slot_);
      error = slot_error_;
      hit = true;
    }
    // Start on the next step now: it is made while this one runs.
    slot_step_ = step + 1 < opts_.end_step ? step + 1 : -1;
    slot_ready_ = false;
    slot_.clear();
    slot_error_ = nullptr;
    request_ = slot_step_;
  }
  cv_.notify_all();
  if (error) std::rethrow_exception(error);
  if (hit) {
    ++prefetched_;
    return batches;
  }
  return Make(step);
}

}  // namespace moe
