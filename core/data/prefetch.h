// BatchPrefetcher: makes the training micro-batches of step s+1 on a background thread while
// step s runs, so that the host's batch preparation is off the step's critical path. It changes
// only *when* a batch is made, never which: Take(step)[micro] is exactly
// source.TrainBatch(step, micro, rank, world), whatever the order of the calls (tests/core/
// prefetch_test.cpp checks it, also after a jump and with several micro-batches).
// What it takes off the step (2-core CPU, batch 16 x seq 1024): TrainBatch's ~15 us per
// micro-batch for every source, and with pinning the synchronous staging of a pageable copy;
// taking a prefetched step costs ~2-4 us (a lock and a move).
//
// Contract:
//   Thread     The object owns one worker thread, started by the constructor and joined by the
//              destructor (which waits for a batch being made to finish; nothing is cancelled
//              half-way). One thread calls Take; the object is not otherwise thread-safe.
//   Source     Not owned; must outlive the prefetcher. The worker calls source.TrainBatch while
//              the caller's thread may call TrainBatch or ValBatch of the same source, so a source
//              must be safe for concurrent calls and must not draw from torch's global generator
//              (the in-tree sources are pure functions of their arguments, data_source.h).
//   Pinning    With pin_memory (the trainer sets it when the device is CUDA, the one place that
//              differs) each batch is copied into page-locked host memory on the worker, so that
//              the caller's to(device, non_blocking = true) is a real asynchronous DMA. The
//              caller keeps the returned batches alive until the copies from them are done (the
//              trainer: until the step's host sync); LibTorch's caching host allocator also
//              records an event per non-blocking copy and does not hand a block out again before
//              it completes. Without pin_memory the batches are TrainBatch's own tensors.
//   Steps      Take(step) returns the batches of `step` and then starts making step + 1 (if it is
//              < end_step). When `step` is the one being prefetched it waits for it; otherwise
//              (the first call, a resume at an arbitrary step, any jump) it makes `step` on the
//              calling thread and drops the prefetched one. So a resumed run just starts calling
//              Take at its start step, and nothing depends on the order of the calls.
//   Errors     An exception thrown by TrainBatch on the worker is kept with its step and rethrown
//              by the Take of that step, where an unprefetched loop would have thrown it; a step
//              that is never taken (an early stop, a jump) never reports its error.
//   Early stop Destroying the prefetcher at any point (divergence, interruption, an exception
//              unwinding the training loop) joins the worker and discards a prefetched step.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/data/data_source.h"

namespace moe {

struct PrefetchOptions {
  int64_t rank = 0;           // data-parallel rank and world size, passed to TrainBatch
  int64_t world = 1;
  int64_t micro_batches = 1;  // train.grad_accum: Take returns this many batches
  int64_t end_step = 0;       // train.steps: no step >= end_step is made in advance
  bool pin_memory = false;    // page-locked host memory (needs a CUDA build and GPU)
};

class BatchPrefetcher {
 public:
  BatchPrefetcher(DataSource& source, const PrefetchOptions& opts);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // The micro-batches 0..micro_batches-1 of `step` (see the contract above); rethrows
  // TrainBatch's exception for this step.
  std::vector<Batch> Take(int64_t step);

  // How many Take calls were served by the worker (the rest were made on the calling thread).
  int64_t prefetched() const { return prefetched_; }

 private:
  std::vector<Batch> Make(int64_t step);  // on either thread; touches no member but the options
  void Work();

  DataSource& source_;
  const PrefetchOptions opts_;
  int64_t prefetched_ = 0;  // the calling thread's only

  std::mutex mu_;
  std::condition_variable cv_;
  // Guarded by mu_: the step the worker is asked to make next (-1: none), the step the slot is
  // for (-1: none), and the slot: its batches or error once ready.
  int64_t request_ = -1;
  int64_t slot_step_ = -1;
  bool slot_ready_ = false;
  std::vector<Batch> slot_;
  std::exception_ptr slot_error_;
  bool stop_ = false;
  std::thread worker_;  // last: started after every other member is initialised
};

}  // namespace moe
