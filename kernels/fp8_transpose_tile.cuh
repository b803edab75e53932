// The store half of an FP8 transpose through shared memory, shared by the kernels that write an
// operand's transposed FP8 columns in (COLS x ROWS) tiles (cross_entropy_fp8_tiles.cu,
// fp8_rows_to_cols.cu): each thread packs the bytes of four consecutive rows of one column into a
// 32-bit word of `tile`, and this stores the tile's columns as rows of `out`, 16 bytes at a time.
#pragma once

#include <cstdint>

namespace moe::kernels {

// Rows per shared word, and the tile's shared-memory shape: tile[c][w] holds rows 4w..4w+3 of
// column c (byte i = row 4w+i); the +1 word spreads a column's words over the banks.
constexpr int kRowsPerWord = 4;
template <int COLS, int ROWS>
using Fp8TransposeTile = uint32_t[COLS][ROWS / kRowsPerWord + 1];

// Where a column's word w sits in its tile row: w itself, or (ColGroupXorWords) w XOR'd with the
// column's group of 16, for a writer whose threads hold 16 consecutive columns each: a half-warp
// then writes column k of 16 groups at once, 16 tile rows apart, and the XOR spreads those writes
// over 16 banks (without it, 16 rows apart with a 17-word stride is 2 banks: 8-way conflicts).
// Needs 16 words a row (ROWS == 64).
struct PlainWords {
  __device__ __forceinline__ static int Of(int /*col*/, int w) { return w; }
};
struct ColGroupXorWords {
  __device__ __forceinline__ static int Of(int col, int w) { return w ^ ((col / 16) % 16); }
};

// Stores tile (columns col0.., rows row0..) into out (n_cols, ld) row-major: out[c][r], 16-byte
// stores of 16 rows of one column. Columns at or past n_cols and rows at or past ld are skipped a
// whole store at a time, so ld % 16 == 0 (the callers check). Call after a __syncthreads that
// follows the last write to tile. Words: where the writer put each word (PlainWords or
// ColGroupXorWords above).
template <int COLS, int ROWS, int THREADS, typename Words = PlainWords>
__device__ __forceinline__ void StoreTransposedTile(uint8_t* __restrict__ out, const Fp8TransposeTile<COLS, ROWS>& tile,
                                                    int64_t col0, int64_t row0, int64_t n_cols, int64_t ld) {
  constexpr int kWordsPerStore = 4;  // 16 bytes
  constexpr int kStoresPerCol = ROWS / kRowsPerWord / kWordsPerStore;
  static_assert(ROWS % (kRowsPerWord * kWordsPerStore) == 0, "whole 16-byte stores");
  for (int idx = threadIdx.x; idx < COLS * kStoresPerCol; idx += THREADS) {
    const int cc = idx / kStoresPerCol, p = idx % kStoresPerCol;
    const int64_t c = col0 + cc, r = row0 + p * kWordsPerStore * kRowsPerWord;
    if (c >= n_cols || r >= ld) continue;
    const uint32_t* w = tile[cc];
    const int w0 = p * kWordsPerStore;
    *reinterpret_cast<uint4*>(out + c * ld + r) = make_uint4(w[Words::Of(cc, w0)], w[Words::Of(cc, w0 + 1)],
                                                             w[Words::Of(cc, w0 + 2)], w[Words::Of(cc, w0 + 3)]);
  }
}

}  // namespace moe::kernels
