// Device helpers of FP8 quantisation shared by the kernels that write FP8 operands
// (kernels/fp8_quantize.cu, and the producers that quantise what they write: qk_rope_norm.cu,
// cross_entropy.cu, relu_square.cu, swiglu.cu, rms_norm.cu, moe_permute.cu, moe_unpermute.cu): the scale
// from an amax, its reciprocal, ordered-bits maxima, a block's row scale and the scaled, saturating
// cast. One definition, so every producer writes the bytes moe::Quantize would.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#include <limits>

#include "kernels/common.cuh"
#include "kernels/fp8_quantize.h"

namespace moe::kernels {

template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ constexpr float Fp8MaxOf() {
  return F == __NV_E4M3 ? 448.f : 57344.f;
}

// As AmaxToScale: fp8_max / clamp_min(amax, eps), in fp32 with IEEE division (__fdiv_rn, whatever
// the compile flags). Written so that a NaN amax gives a NaN scale, as ATen's clamp_min does
// (fmaxf would return eps).
template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ float ScaleOf(float amax, float eps) {
  return __fdiv_rn(Fp8MaxOf<F>(), amax < eps ? eps : amax);
}

// 1 / scale, correctly rounded (as ATen's reciprocal): what the scaled GEMMs multiply by.
__device__ __forceinline__ float InvOf(float scale) { return __frcp_rn(scale); }

// |v| as ordered bits: for non-negative floats (sign bit clear) the bit patterns order as the
// values do, and a NaN's (0x7F800001..) are above +inf's, so a maximum over them propagates NaN
// as ATen's amax norm does (and atomicMax on unsigned works for floats).
template <typename T>
__device__ __forceinline__ unsigned AbsBits(T v) {
  return __float_as_uint(fabsf(ToFloat(v)));
}
__device__ __forceinline__ unsigned MaxU(unsigned a, unsigned b) { return a > b ? a : b; }

__device__ __forceinline__ unsigned WarpMax(unsigned v) {
  for (int off = 16; off > 0; off /= 2) v = MaxU(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Maximum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
// Called once per kernel, so the shared arrays need no sync before reuse.
__device__ __forceinline__ unsigned BlockMax(unsigned v) {
  __shared__ unsigned partial[32];
  __shared__ unsigned total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpMax(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    unsigned m = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : 0u;
    m = WarpMax(m);
    if (lane == 0) total = m;
  }
  __syncthreads();
  return total;
}

// The scale of a row that a whole block quantises, from each thread's amax bits m: returned to
// every thread; thread 0 writes scale[row] and its reciprocal inv[row]. BlockMax syncs the block,
// so what its threads wrote before the call is visible to all of them after it.
template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ float BlockRowScale(unsigned m, float eps, float* scale, float* inv, int64_t row) {
  const float s = ScaleOf<F>(__uint_as_float(BlockMax(m)), eps);
  if (threadIdx.x == 0) {
    scale[row] = s;
    inv[row] = InvOf(s);
  }
  return s;
}

// fp32 product, then one round-to-nearest-even cast. __NV_SATFINITE clamps to +-fp8_max (inf
// included) and keeps NaN a NaN; a clamp by fminf/fmaxf before the cast would turn NaN into 448.
template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ uint8_t CastFp8(float v, float scale) {
  return __nv_cvt_float_to_fp8(__fmul_rn(v, scale), __NV_SATFINITE, F);
}

// Where a kernel that quantises the rows it writes puts them, for the rowwise FP8 GEMM that
// consumes them: q8 (rows, d) e4m3 bytes, scale and inv (rows,) fp32; eps is moe::kAmaxEps. Null
// q8: no FP8 rows are written.
struct Fp8RowsOut {
  uint8_t* q8 = nullptr;
  float* scale = nullptr;
  float* inv = nullptr;
  float eps = 0.f;
};

// The activations' FP8 forms (relu_square.cu, swiglu.cu) give a block to each row and one 8-vector
// to each thread, so a row of C elements takes C / 8 threads, at most kMaxBlockRowFp8Vecs.
constexpr int64_t kMaxBlockRowFp8Vecs = 1024;
// Whether such a kernel takes x: a non-empty bf16 CUDA tensor whose last dimension C is a
// multiple of 8 and at most 8 * kMaxBlockRowFp8Vecs, fewer than 2^31 rows.
inline bool BlockRowFp8Supported(const at::Tensor& x) {
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || x.dim() < 1 || x.numel() == 0) return false;
  const int64_t C = x.size(-1);
  return C % 8 == 0 && C / 8 <= kMaxBlockRowFp8Vecs && x.numel() / C <= std::numeric_limits<int32_t>::max();
}
// Threads of such a block for rows of C elements: C / 8, rounded up to whole warps.
inline unsigned BlockRowFp8Threads(int64_t C) { return static_cast<unsigned>((C / 8 + 31) / 32 * 32); }

// Storage for the FP8 rows of a (rows, C) output, on options' device: data e4m3 (rows, C), scale
// and inv_scale (rows, 1); and where a kernel writes them.
inline Fp8Quantized EmptyFp8Rows(int64_t rows, int64_t C, const at::TensorOptions& options) {
  Fp8Quantized q;
  q.data = EmptyCuda({rows, C}, options.dtype(at::kFloat8_e4m3fn));  // (rows, C)
  q.scale = EmptyCuda({rows, 1}, options.dtype(at::kFloat));         // (rows, 1)
  q.inv_scale = EmptyCuda({rows, 1}, options.dtype(at::kFloat));     // (rows, 1)
  return q;
}
inline Fp8RowsOut RowsOutOf(const Fp8Quantized& q, double amax_eps) {
  return {reinterpret_cast<uint8_t*>(q.data.data_ptr()), q.scale.data_ptr<float>(), q.inv_scale.data_ptr<float>(),
          static_cast<float>(amax_eps)};
}

// VEC scaled casts of one input vector into VEC bytes, two per cvt where VEC is even.
template <typename T, int VEC, __nv_fp8_interpretation_t F>
__device__ __forceinline__ Vec<uint8_t, VEC> CastVec(const Vec<T, VEC>& in, float scale) {
  Vec<uint8_t, VEC> o;
  if constexpr (VEC % 2 == 0) {
#pragma unroll
    for (int e = 0; e < VEC; e += 2) {
      const float2 p = make_float2(__fmul_rn(ToFloat(in.v[e]), scale), __fmul_rn(ToFloat(in.v[e + 1]), scale));
      const __nv_fp8x2_storage_t q = __nv_cvt_float2_to_fp8x2(p, __NV_SATFINITE, F);  // .x in the low byte
      o.v[e] = static_cast<uint8_t>(q & 0xffu);
      o.v[e + 1] = static_cast<uint8_t>(q >> 8);
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = CastFp8<F>(ToFloat(in.v[e]), scale);
  }
  return o;
}

}  // namespace moe::kernels
