// RoPE + parameterless RMSNorm of q and k from the fused qkv projection, and the backward that
// writes the projection's gradient (q, k and v heads) in one pass (kernels/qk_rope_norm.h).
//
// A group of LANES lanes per head vector, each lane VEC elements (16 bytes) of either half, so the
// rotation pairs stay in registers, every access is a 16-byte vector and the norm is one
// reduction over the group (hd 128 in bf16: 8 lanes, 4 vectors per warp).
#include "kernels/common.cuh"
#include "kernels/qk_rope_norm.h"
#include "kernels/fp8_cast.cuh"

namespace moe::kernels {

namespace {

// A (B, T, H, hd) operand read through its strides (last dimension contiguous), or null.
template <typename T>
struct Strided {
  const T* p;
  int64_t sb, st, sh;
  __device__ const T* At(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};

struct Shape {
  int64_t rows;  // B * T
  int seq, Hq, Hkv, hd;
  float eps;
};

// ----------------------------------------------------------------------------
// kernels

// The sum over the LANES lanes of one vector's group (aligned groups of a power of two). Only the
// group's lanes take part: other groups of the warp may have left (a v head, a missing cotangent).
template <int LANES>
__device__ __forceinline__ float GroupSum(float v) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = LANES == 32 ? 0xffffffffu : ((1u << LANES) - 1u) << (lane & ~(LANES - 1u));
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  return v;
}

template <typename T, int VEC>
__device__ __forceinline__ void LoadHalves(const T* v, int half, int col, float (&a)[VEC], float (&b)[VEC]) {
  const Vec<T, VEC> x1 = *reinterpret_cast<const Vec<T, VEC>*>(v + col);
  const Vec<T, VEC> x2 = *reinterpret_cast<const Vec<T, VEC>*>(v + half + col);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    a[e] = ToFloat(x1.v[e]);
    b[e] = ToFloat(x2.v[e]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void StoreHalves(T* v, int half, int col, const float (&a)[VEC], const float (&b)[VEC]) {
  Vec<T, VEC> y1, y2;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    y1.v[e] = FromFloat<T>(a[e]);
    y2.v[e] = FromFloat<T>(b[e]);
  }
  *reinterpret_cast<Vec<T, VEC>*>(v + col) = y1;
  *reinterpret_cast<Vec<T, VEC>*>(v + half + col) = y2;
}

// The position's table values (16-byte loads), rounded to T as kernels/rope.cu does.
template <typename T, int VEC>
__device__ __forceinline__ void LoadAngles(const float* cos_tab, const float* sin_tab, int t, int half, int col,
                                           float (&c)[VEC], float (&s)[VEC]) {
  constexpr int TV = VEC < 4 ? VEC : 4;
#pragma unroll
  for (int k = 0; k < VEC / TV; ++k) {
    const Vec<float, TV> cv = *reinterpret_cast<const Vec<float, TV>*>(cos_tab + t * half + col + k * TV);
    const Vec<float, TV> sv = *reinterpret_cast<const Vec<float, TV>*>(sin_tab + t * half + col + k * TV);
#pragma unroll
    for (int e = 0; e < TV; ++e) {
      c[k * TV + e] = ToFloat(FromFloat<T>(cv.v[e]));
      s[k * TV + e] = ToFloat(FromFloat<T>(sv.v[e]));
    }
  }
}

// r = R_t x for this lane's pairs; returns the vector's rstd, computed from r: with the tables
// rounded to the dtype the rotation is not exactly norm-preserving, and the unfused path
// normalises the rotated vector.
template <int VEC, int LANES>
__device__ __forceinline__ float Rotate(const float (&a)[VEC], const float (&b)[VEC], const float (&c)[VEC],
                                        const float (&s)[VEC], float (&r1)[VEC], float (&r2)[VEC], const Shape& sh) {
  float ss = 0.f;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    r1[e] = a[e] * c[e] + b[e] * s[e];
    r2[e] = b[e] * c[e] - a[e] * s[e];
    ss += r1[e] * r1[e] + r2[e] * r2[e];
  }
  return rsqrtf(GroupSum<LANES>(ss) / static_cast<float>(sh.hd) + sh.eps);
}

// Thread i: lane i % LANES of head vector i / LANES = row * (Hq + Hkv) + h of q (h < Hq) or k;
// LANES = hd / (2 * VEC) lanes cover a vector, each VEC elements of either half.
template <typename T, int VEC, int LANES>
__global__ void qk_rope_norm_forward_kernel(T* __restrict__ q, T* __restrict__ k, const T* __restrict__ qkv,
                                            const float* __restrict__ cos_tab, const float* __restrict__ sin_tab,
                                            Shape sh) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned heads = sh.Hq + sh.Hkv, vec = i / LANES;
  if (vec >= sh.rows * heads) return;  // whole groups (blockDim and LANES are powers of two)
  const unsigned row = vec / heads, h = vec % heads;
  const int t = static_cast<int>(row % sh.seq), half = sh.hd / 2, col = static_cast<int>(i % LANES) * VEC;
  const T* x = qkv + (static_cast<int64_t>(row) * (heads + sh.Hkv) + h) * sh.hd;
  T* y = h < static_cast<unsigned>(sh.Hq) ? q + (static_cast<int64_t>(row) * sh.Hq + h) * sh.hd
                                          : k + (static_cast<int64_t>(row) * sh.Hkv + (h - sh.Hq)) * sh.hd;
  float a[VEC], b[VEC], c[VEC], s[VEC], r1[VEC], r2[VEC];
  LoadHalves<T, VEC>(x, half, col, a, b);
  LoadAngles<T, VEC>(cos_tab, sin_tab, t, half, col, c, s);
  const float rstd = Rotate<VEC, LANES>(a, b, c, s, r1, r2, sh);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    r1[e] *= rstd;
    r2[e] *= rstd;
  }
  StoreHalves<T, VEC>(y, half, col, r1, r2);
}

// The gradient of one lane's slice of dqkv's head vector (row, h): d1, d2 at columns [col, col +
// VEC) of either half. q and k heads run the backward of RmsNorm(RoPE(x)); v heads copy dv; a
// missing cotangent gives zeros. The LANES lanes of a vector call it together (the q/k path
// reduces over them).
template <typename T, int VEC, int LANES>
__device__ __forceinline__ void BackwardSlice(const T* __restrict__ qkv, const Strided<T>& dq, const Strided<T>& dk,
                                              const Strided<T>& dv, const float* __restrict__ cos_tab,
                                              const float* __restrict__ sin_tab, const Shape& sh, unsigned row,
                                              unsigned h, int col, float (&d1)[VEC], float (&d2)[VEC]) {
  const unsigned heads = sh.Hq + 2 * sh.Hkv, qk = sh.Hq + sh.Hkv;
  const int64_t bi = row / sh.seq;
  const int t = static_cast<int>(row % sh.seq), half = sh.hd / 2;
  const bool is_q = h < static_cast<unsigned>(sh.Hq), is_k = !is_q && h < qk;
  // Each field picked by value: a reference chosen among kernel parameters puts all three in a
  // per-thread stack frame (96 bytes written and read back by every thread; ncu showed that
  // local-memory traffic holding the L2 at 97% while DRAM ran at 68%).
  const Strided<T> g{is_q ? dq.p : (is_k ? dk.p : dv.p), is_q ? dq.sb : (is_k ? dk.sb : dv.sb),
                     is_q ? dq.st : (is_k ? dk.st : dv.st), is_q ? dq.sh : (is_k ? dk.sh : dv.sh)};
  const int gh = static_cast<int>(is_q ? h : (is_k ? h - sh.Hq : h - qk));
  if (g.p == nullptr) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) d1[e] = d2[e] = 0.f;
    return;
  }
  LoadHalves<T, VEC>(g.At(bi, t, gh), half, col, d1, d2);
  if (h >= qk) return;  // v: a copy
  float a[VEC], b[VEC], c[VEC], s[VEC], y1[VEC], y2[VEC];
  LoadHalves<T, VEC>(qkv + (static_cast<int64_t>(row) * heads + h) * sh.hd, half, col, a, b);
  LoadAngles<T, VEC>(cos_tab, sin_tab, t, half, col, c, s);
  const float rstd = Rotate<VEC, LANES>(a, b, c, s, y1, y2, sh);
  float dot = 0.f;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    y1[e] *= rstd;
    y2[e] *= rstd;
    dot += d1[e] * y1[e] + d2[e] * y2[e];
  }
  dot = GroupSum<LANES>(dot) / static_cast<float>(sh.hd);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const float r1 = rstd * (d1[e] - y1[e] * dot), r2 = rstd * (d2[e] - y2[e] * dot);
    d1[e] = r1 * c[e] - r2 * s[e];  // R^T: rotation by the opposite angle
    d2[e] = r1 * s[e] + r2 * c[e];
  }
}

// Thread i: lane i % LANES of head vector i / LANES = row * (Hq + 2*Hkv) + h of dqkv.
template <typename T, int VEC, int LANES>
__global__ void qk_rope_norm_backward_kernel(T* __restrict__ dqkv, const T* __restrict__ qkv, Strided<T> dq,
                                             Strided<T> dk, Strided<T> dv, const float* __restrict__ cos_tab,
                                             const float* __restrict__ sin_tab, Shape sh) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned heads = sh.Hq + 2 * sh.Hkv, vec = i / LANES;
  if (vec >= sh.rows * heads) return;
  const int col = static_cast<int>(i % LANES) * VEC;
  float d1[VEC], d2[VEC];
  BackwardSlice<T, VEC, LANES>(qkv, dq, dk, dv, cos_tab, sin_tab, sh, vec / heads, vec % heads, col, d1, d2);
  StoreHalves<T, VEC>(dqkv + static_cast<int64_t>(vec) * sh.hd, sh.hd / 2, col, d1, d2);
}

// The same, a block per token row (thread j < heads * LANES: lane j % LANES of head j / LANES;
// blockDim a multiple of 32), and the row quantised for the FP8 input-gradient GEMM in the same
// pass: the block's amax of the stored (dtype-rounded) values gives the row's scale, and the
// values still in registers are cast, as Fp8Quantize's row kernel casts what it reads back, so
// q8 (rows, heads * hd) e4m3, scale and inv (rows,) are its bytes without reading dqkv again.
// dqkv null: the FP8 rows alone (their consumer reads nothing else).
template <typename T, int VEC, int LANES>
__global__ void qk_rope_norm_backward_fp8_kernel(T* __restrict__ dqkv, uint8_t* __restrict__ q8,
                                                 float* __restrict__ scale, float* __restrict__ inv,
                                                 const T* __restrict__ qkv, Strided<T> dq, Strided<T> dk,
                                                 Strided<T> dv, const float* __restrict__ cos_tab,
                                                 const float* __restrict__ sin_tab, Shape sh, float amax_eps) {
  const unsigned row = blockIdx.x, j = threadIdx.x;
  const unsigned heads = sh.Hq + 2 * sh.Hkv, h = j / LANES;
  const bool active = h < heads;  // whole groups: heads * LANES is a multiple of LANES
  const int col = static_cast<int>(j % LANES) * VEC, half = sh.hd / 2;
  Vec<T, VEC> o1, o2;
  unsigned m = 0u;
  if (active) {
    float d1[VEC], d2[VEC];
    BackwardSlice<T, VEC, LANES>(qkv, dq, dk, dv, cos_tab, sin_tab, sh, row, h, col, d1, d2);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      o1.v[e] = FromFloat<T>(d1[e]);
      o2.v[e] = FromFloat<T>(d2[e]);
      m = MaxU(m, MaxU(AbsBits(o1.v[e]), AbsBits(o2.v[e])));
    }
    if (dqkv != nullptr) {
      T* out = dqkv + (static_cast<int64_t>(row) * heads + h) * sh.hd;
      *reinterpret_cast<Vec<T, VEC>*>(out + col) = o1;
      *reinterpret_cast<Vec<T, VEC>*>(out + half + col) = o2;
    }
  }
  const float s = BlockRowScale<__NV_E4M3>(m, amax_eps, scale, inv, row);
  if (active) {
    uint8_t* out = q8 + (static_cast<int64_t>(row) * heads + h) * sh.hd;
    *reinterpret_cast<Vec<uint8_t, VEC>*>(out + col) = CastVec<T, VEC, __NV_E4M3>(o1, s);
    *reinterpret_cast<Vec<uint8_t, VEC>*>(out + half + col) = CastVec<T, VEC, __NV_E4M3>(o2, s);
  }
}

// ----------------------------------------------------------------------------
// launchers

constexpr int kBlock = 256;

unsigned Blocks(int64_t threads) { return static_cast<unsigned>((threads + kBlock - 1) / kBlock); }

void CheckThreads(int64_t threads) {
  TORCH_CHECK(threads < (int64_t{1} << 31), "qk_rope_norm: ", threads, " threads exceed one launch's 32-bit index");
}

template <typename T, int VEC, int LANES>
void qk_rope_norm_forward(T* q, T* k, const T* qkv, const float* cos_tab, const float* sin_tab, Shape sh,
                          cudaStream_t stream) {
  const int64_t threads = sh.rows * (sh.Hq + sh.Hkv) * LANES;
  if (threads == 0) return;
  CheckThreads(threads);
  qk_rope_norm_forward_kernel<T, VEC, LANES><<<Blocks(threads), kBlock, 0, stream>>>(q, k, qkv, cos_tab, sin_tab, sh);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC, int LANES>
void qk_rope_norm_backward(T* dqkv, const T* qkv, Strided<T> dq, Strided<T> dk, Strided<T> dv, const float* cos_tab,
                           const float* sin_tab, Shape sh, cudaStream_t stream) {
  const int64_t threads = sh.rows * (sh.Hq + 2 * sh.Hkv) * LANES;
  if (threads == 0) return;
  CheckThreads(threads);
  qk_rope_norm_backward_kernel<T, VEC, LANES>
      <<<Blocks(threads), kBlock, 0, stream>>>(dqkv, qkv, dq, dk, dv, cos_tab, sin_tab, sh);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Threads per block of the FP8 backward: one token row, rounded up to whole warps.
int Fp8RowThreads(int64_t heads, int64_t lanes) { return static_cast<int>((heads * lanes + 31) / 32 * 32); }

template <typename T, int VEC, int LANES>
void qk_rope_norm_backward_fp8(T* dqkv, uint8_t* q8, float* scale, float* inv, const T* qkv, Strided<T> dq,
                               Strided<T> dk, Strided<T> dv, const float* cos_tab, const float* sin_tab, Shape sh,
                               float amax_eps, cudaStream_t stream) {
  if (sh.rows == 0) return;
  TORCH_CHECK(sh.rows <= INT32_MAX, "qk_rope_norm: ", sh.rows, " rows exceed one launch's grid");
  const int threads = Fp8RowThreads(sh.Hq + 2 * sh.Hkv, LANES);
  qk_rope_norm_backward_fp8_kernel<T, VEC, LANES><<<static_cast<unsigned>(sh.rows), threads, 0, stream>>>(
      dqkv, q8, scale, inv, qkv, dq, dk, dv, cos_tab, sin_tab, sh, amax_eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(T{}, VEC, LANES) for the dtype and head size: VEC = 16 bytes of T, LANES = hd / 2 / VEC.
template <typename F>
void Dispatch(at::ScalarType dt, int64_t hd, F&& f) {
  auto lanes = [&](auto tag, auto vec) {
    constexpr int VEC = decltype(vec)::value;
    switch (hd / 2 / VEC) {
      case 4: f(tag, vec, std::integral_constant<int, 4>{}); break;
      case 8: f(tag, vec, std::integral_constant<int, 8>{}); break;
      case 16: f(tag, vec, std::integral_constant<int, 16>{}); break;
      case 32: f(tag, vec, std::integral_constant<int, 32>{}); break;
      default: TORCH_CHECK(false, "qk_rope_norm: head_dim ", hd, " not supported (64, 128 or 256)");
    }
  };
  if (dt == at::kBFloat16) {
    lanes(__nv_bfloat16{}, std::integral_constant<int, 8>{});
  } else {
    TORCH_CHECK(dt == at::kFloat, "qk_rope_norm: qkv must be bf16 or fp32, got ", dt);
    lanes(float{}, std::integral_constant<int, 4>{});
  }
}

void CheckTables(const at::Tensor& cos, const at::Tensor& sin, int64_t T, int64_t hd) {
  for (const at::Tensor* tab : {&cos, &sin}) {
    TORCH_CHECK(tab->is_cuda() && tab->scalar_type() == at::kFloat && tab->is_contiguous() && tab->dim() == 2 &&
                    tab->size(0) >= T && tab->size(1) == hd / 2,
                "qk_rope_norm: cos/sin must be contiguous fp32 CUDA (>= T, hd/2) tables");
  }
}

// A cotangent as a strided view in dtype dt whose last dimension is contiguous and whose other
// strides keep P-element vectors aligned; copied where it is not. keep holds the converted tensor.
template <typename T>
Strided<T> AsStrided(const at::Tensor& g, at::ScalarType dt, int P, at::IntArrayRef shape, at::Tensor& keep) {
  if (!g.defined()) return {nullptr, 0, 0, 0};
  TORCH_CHECK(g.sizes() == shape, "QkRopeNormBackward: a cotangent of shape ", g.sizes(), ", expected ", shape);
  keep = g.to(dt);
  const auto aligned = [&](int64_t v) { return v % P == 0; };
  const bool ok = keep.stride(3) == 1 && aligned(keep.stride(0)) && aligned(keep.stride(1)) && aligned(keep.stride(2)) &&
                  reinterpret_cast<std::uintptr_t>(keep.data_ptr()) % (P * keep.element_size()) == 0;
  if (!ok) keep = keep.contiguous();
  return {static_cast<const T*>(keep.data_ptr()), keep.stride(0), keep.stride(1), keep.stride(2)};
}

// Both backward entry points: checks qkv and the tables, then calls
// f(T{}, VEC, LANES, gq, gk, gv, sh) with the cotangents as strided views in qkv's dtype (converted
// copies, where needed, live until f has queued its launch).
template <typename F>
void WithBackwardArgs(const char* who, const at::Tensor& qkv, const at::Tensor& dq, const at::Tensor& dk,
                      const at::Tensor& dv, int64_t Hq, int64_t Hkv, const at::Tensor& cos, const at::Tensor& sin,
                      double eps, F&& f) {
  TORCH_CHECK(qkv.is_cuda() && qkv.dim() == 4 && qkv.is_contiguous() && qkv.size(2) == Hq + 2 * Hkv, who,
              ": qkv must be a contiguous CUDA (B, T, Hq + 2*Hkv, hd) tensor");
  const int64_t B = qkv.size(0), T = qkv.size(1), hd = qkv.size(3);
  CheckTables(cos, sin, T, hd);
  const Shape sh{B * T, static_cast<int>(T), static_cast<int>(Hq), static_cast<int>(Hkv), static_cast<int>(hd),
                 static_cast<float>(eps)};
  const auto dt = qkv.scalar_type();
  at::Tensor kq, kk, kv;
  Dispatch(dt, hd, [&](auto tag, auto vec, auto lanes) {
    using T_ = decltype(tag);
    constexpr int VEC = decltype(vec)::value;
    const Strided<T_> gq = AsStrided<T_>(dq, dt, VEC, {B, T, Hq, hd}, kq);
    const Strided<T_> gk = AsStrided<T_>(dk, dt, VEC, {B, T, Hkv, hd}, kk);
    const Strided<T_> gv = AsStrided<T_>(dv, dt, VEC, {B, T, Hkv, hd}, kv);
    f(tag, vec, lanes, gq, gk, gv, sh);
  });
}

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry points

bool QkRopeNormSupported(int64_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

std::tuple<at::Tensor, at::Tensor> QkRopeNormForward(const at::Tensor& qkv, int64_t Hq, int64_t Hkv,
                                                     const at::Tensor& cos, const at::Tensor& sin, double eps) {
  TORCH_CHECK(qkv.is_cuda() && qkv.dim() == 4 && qkv.is_contiguous() && qkv.size(2) == Hq + 2 * Hkv,
              "QkRopeNormForward: qkv must be a contiguous CUDA (B, T, Hq + 2*Hkv, hd) tensor");
  const int64_t B = qkv.size(0), T = qkv.size(1), hd = qkv.size(3);
  CheckTables(cos, sin, T, hd);
  at::Tensor q = EmptyCuda({B, T, Hq, hd}, qkv.options()), k = EmptyCuda({B, T, Hkv, hd}, qkv.options());
  const Shape sh{B * T, static_cast<int>(T), static_cast<int>(Hq), static_cast<int>(Hkv), static_cast<int>(hd),
                 static_cast<float>(eps)};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Dispatch(qkv.scalar_type(), hd, [&](auto tag, auto vec, auto lanes) {
    using T_ = decltype(tag);
    qk_rope_norm_forward<T_, decltype(vec)::value, decltype(lanes)::value>(
        static_cast<T_*>(q.data_ptr()), static_cast<T_*>(k.data_ptr()), static_cast<const T_*>(qkv.data_ptr()),
        cos.data_ptr<float>(), sin.data_ptr<float>(), sh, stream);
  });
  return {q, k};
}

at::Tensor QkRopeNormBackward(const at::Tensor& qkv, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                              int64_t Hq, int64_t Hkv, const at::Tensor& cos, const at::Tensor& sin, double eps) {
  at::Tensor dqkv;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  WithBackwardArgs("QkRopeNormBackward", qkv, dq, dk, dv, Hq, Hkv, cos, sin, eps,
                   [&](auto tag, auto vec, auto lanes, const auto& gq, const auto& gk, const auto& gv, const Shape& sh) {
                     using T_ = decltype(tag);
                     dqkv = EmptyCuda(qkv.sizes(), qkv.options());
                     qk_rope_norm_backward<T_, decltype(vec)::value, decltype(lanes)::value>(
                         static_cast<T_*>(dqkv.data_ptr()), static_cast<const T_*>(qkv.data_ptr()), gq, gk, gv,
                         cos.data_ptr<float>(), sin.data_ptr<float>(), sh, stream);
                   });
  return dqkv;
}

bool QkRopeNormBackwardFp8Supported(int64_t heads, int64_t head_dim, at::ScalarType dtype) {
  if (!QkRopeNormSupported(head_dim) || (dtype != at::kBFloat16 && dtype != at::kFloat) || heads <= 0) return false;
  const int64_t lanes = head_dim / 2 / (dtype == at::kBFloat16 ? 8 : 4);
  return heads * lanes <= 1024;  // one block per row
}

QkvGradFp8 QkRopeNormBackwardFp8(const at::Tensor& qkv, const at::Tensor& dq, const at::Tensor& dk,
                                 const at::Tensor& dv, int64_t Hq, int64_t Hkv, const at::Tensor& cos,
                                 const at::Tensor& sin, double eps, double amax_eps, bool write_dqkv) {
  QkvGradFp8 r;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  WithBackwardArgs(
      "QkRopeNormBackwardFp8", qkv, dq, dk, dv, Hq, Hkv, cos, sin, eps,
      [&](auto tag, auto vec, auto lanes, const auto& gq, const auto& gk, const auto& gv, const Shape& sh) {
        using T_ = decltype(tag);
        const int64_t heads = Hq + 2 * Hkv, hd = qkv.size(3);
        TORCH_CHECK(QkRopeNormBackwardFp8Supported(heads, hd, qkv.scalar_type()), "QkRopeNormBackwardFp8: ", heads,
                    " heads of ", hd, " in ", qkv.scalar_type(), " do not fit one block per row");
        if (write_dqkv) r.dqkv = EmptyCuda(qkv.sizes(), qkv.options());  // (B, T, Hq + 2*Hkv, hd)
        r.fp8.data = EmptyCuda({sh.rows, heads * hd}, qkv.options().dtype(at::kFloat8_e4m3fn));
        r.fp8.scale = EmptyCuda({sh.rows, 1}, qkv.options().dtype(at::kFloat));
        r.fp8.inv_scale = EmptyCuda(r.fp8.scale.sizes(), r.fp8.scale.options());
        qk_rope_norm_backward_fp8<T_, decltype(vec)::value, decltype(lanes)::value>(
            write_dqkv ? static_cast<T_*>(r.dqkv.data_ptr()) : nullptr, reinterpret_cast<uint8_t*>(r.fp8.data.data_ptr()),
            r.fp8.scale.data_ptr<float>(), r.fp8.inv_scale.data_ptr<float>(), static_cast<const T_*>(qkv.data_ptr()),
            gq, gk, gv, cos.data_ptr<float>(), sin.data_ptr<float>(), sh, static_cast<float>(amax_eps), stream);
      });
  return r;
}

}  // namespace moe::kernels
