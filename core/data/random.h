// Keyed, counter-based random numbers for the data sources.
//
// Why not torch::Generator: the CPU generator is an mt19937 that keeps only the low 32 bits of its
// seed, so per-(step, micro, rank) seeds would collide by the birthday bound within ~1e5 steps and
// two steps of a long run would silently train on the same batch. A counter-based stream keyed by
// a full 64-bit hash of (seed, stream, step, micro, rank) has no state to carry across steps (so a
// resumed run sees the same data), gives value i in O(1) (so rows can be filled in parallel) and
// is cheaper than mt19937. The numbers are stable across platforms and LibTorch versions.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace moe {
namespace data {

// SplitMix64 finaliser: a bijection on 64-bit words with full avalanche.
inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Folds the parts into one stream key; the order of the parts matters. Negative values (seeds)
// are taken as their two's-complement bits.
inline uint64_t StreamKey(std::initializer_list<int64_t> parts) {
  uint64_t k = 0x6a09e667f3bcc908ULL;  // arbitrary non-zero start
  for (int64_t p : parts) k = Mix64(k ^ Mix64(static_cast<uint64_t>(p) + 0x9e3779b97f4a7c15ULL));
  return k;
}

// The i-th 64-bit number of the stream `key` (SplitMix64 evaluated at position i).
inline uint64_t StreamAt(uint64_t key, uint64_t i) {
  return Mix64(key + (i + 1) * 0x9e3779b97f4a7c15ULL);
}

// Maps a uniform 64-bit number to [0, n) (multiply-shift; the bias is below n / 2^64).
inline int64_t Below(uint64_t r, int64_t n) {
  return static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(n)) >> 64);
}

// Stream tags: keep train and validation (and any future stream) independent for the same seed.
enum StreamTag : int64_t { kTrainStream = 1, kValStream = 2 };

}  // namespace data
}  // namespace moe
