// Rotary position embedding (half-split layout) and its backward, one elementwise pass each: a
// thread rotates VEC pairs (v1[i], v2[i]) of one head vector, reading both halves and the position's
// cos/sin once and writing both output halves. The ATen composition (casts, 4 muls, neg, 2 adds,
// cat, and as many ops again in the backward) reads and writes q and k of every layer ~10 times.
//
// The input is read through its (B, T, H) strides, so q and k stay views of the fused qkv
// projection (no .contiguous() copy); the output is contiguous. Index math: the flat item index
// (row, vector) and its split into (b, t, h) are 32-bit with multiply-shift division (ATen's
// IntDivider), at most INT32_MAX items per launch (the launcher splits B into chunks past that);
// memory offsets are 64-bit.
#include "kernels/common.cuh"
#include "kernels/rope.h"

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <ATen/cuda/detail/IntegerDivider.cuh>

namespace moe::kernels {

namespace {
constexpr int kBlock = 256;
using Divider = at::cuda::detail::IntDivider<unsigned int>;
}  // namespace

// ----------------------------------------------------------------------------
// kernels

namespace {

// VEC consecutive fp32 table values from p, as vectors of up to 16 bytes (p aligned to one).
template <int VEC>
__device__ __forceinline__ void LoadTable(float (&out)[VEC], const float* __restrict__ p) {
  constexpr int TV = VEC < 4 ? VEC : 4;
#pragma unroll
  for (int k = 0; k < VEC / TV; ++k) {
    const Vec<float, TV> v = reinterpret_cast<const Vec<float, TV>*>(p)[k];
#pragma unroll
    for (int e = 0; e < TV; ++e) out[k * TV + e] = v.v[e];
  }
}

}  // namespace

// y (B, T, H, hd) contiguous; x (B, T, H, hd) with strides (sb, st, sh, 1); cos, sin (>= T, half)
// row-major fp32; half = hd / 2, half % VEC == 0. items = B * T * H * nvec, nvec = half / VEC:
// item i is vector j = i % nvec of row (b*T + t)*H + h. BACKWARD rotates by -angle (s -> -s).
// Launch preconditions (see PickVec): x, each stride and half keep every VEC vector aligned.
template <typename T, int VEC, bool BACKWARD>
__global__ void rope_kernel(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ cos_tab,
                            const float* __restrict__ sin_tab, unsigned items, Divider nvec, Divider heads,
                            Divider seq, int64_t sb, int64_t st, int64_t sh, int64_t half) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;  // < items + kBlock <= 2^31 + 255
  if (i >= items) return;
  const auto row_j = nvec.divmod(i);          // (row, j)
  const auto bt_h = heads.divmod(row_j.div);  // (b*T + t, h)
  const auto b_t = seq.divmod(bt_h.div);      // (b, t)
  const int64_t col = static_cast<int64_t>(row_j.mod) * VEC;
  const int64_t t = b_t.mod;
  const T* xr = x + static_cast<int64_t>(b_t.div) * sb + t * st + static_cast<int64_t>(bt_h.mod) * sh + col;
  T* yr = y + static_cast<int64_t>(row_j.div) * (2 * half) + col;

  const Vec<T, VEC> v1 = *reinterpret_cast<const Vec<T, VEC>*>(xr);         // (VEC,) of the first half
  const Vec<T, VEC> v2 = *reinterpret_cast<const Vec<T, VEC>*>(xr + half);  // (VEC,) of the second
  float c[VEC], s[VEC];
  LoadTable<VEC>(c, cos_tab + t * half + col);
  LoadTable<VEC>(s, sin_tab + t * half + col);
  Vec<T, VEC> o1, o2;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    // The table rounded to T first, as the ATen expression's cast does (identity for fp32). For
    // bf16 the products are exact in fp32: the only roundings are the sum's, to fp32 and to T.
    const float ce = ToFloat(FromFloat<T>(c[e]));
    const float se = BACKWARD ? -ToFloat(FromFloat<T>(s[e])) : ToFloat(FromFloat<T>(s[e]));
    const float a = ToFloat(v1.v[e]), b = ToFloat(v2.v[e]);
    o1.v[e] = FromFloat<T>(a * ce + b * se);
    o2.v[e] = FromFloat<T>(b * ce - a * se);
  }
  *reinterpret_cast<Vec<T, VEC>*>(yr) = o1;
  *reinterpret_cast<Vec<T, VEC>*>(yr + half) = o2;
}

// ----------------------------------------------------------------------------
// launchers

// y (B, T, H, hd) contiguous, x (B, T, H, hd) strided as above. B, T, H > 0.
template <typename T, int VEC, bool BACKWARD>
void rope(T* y, const T* x, const float* cos_tab, const float* sin_tab, int64_t B, int64_t seq, int64_t H,
          int64_t hd, int64_t sb, int64_t st, int64_t sh, cudaStream_t stream) {
  const int64_t half = hd / 2;
  const int64_t nvec = half / VEC;
  // 32-bit item indices: whole batch rows per launch, as many as fit (one launch in practice).
  const int64_t items_per_b = seq * H * nvec;
  TORCH_CHECK(items_per_b <= INT32_MAX, "rope: one sequence of ", seq, " x ", H, " heads x ", hd,
              " is more than one launch takes");
  const int64_t chunk = INT32_MAX / items_per_b;
  const Divider nvec_div(static_cast<unsigned>(nvec)), heads_div(static_cast<unsigned>(H)),
      seq_div(static_cast<unsigned>(seq));
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = B - b0 < chunk ? B - b0 : chunk;
    const auto items = static_cast<unsigned>(nb * items_per_b);
    const unsigned blocks = (items + kBlock - 1) / kBlock;
    rope_kernel<T, VEC, BACKWARD><<<blocks, kBlock, 0, stream>>>(y + b0 * seq * H * hd, x + b0 * sb, cos_tab, sin_tab,
                                                                 items, nvec_div, heads_div, seq_div, sb, st, sh, half);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

namespace {

// The widest vector (16 bytes down to 1 element) with which every access of the kernel is
// aligned: x's base and (B, T, H) strides (size-1 dimensions never step), the half, and the
// tables' base (fp32 table vectors are min(VEC, 4) wide). y is a fresh allocation and steps by
// hd = 2 * half, so it is aligned whenever half is.
int PickVec(const at::Tensor& x, const float* cos_tab, const float* sin_tab) {
  const int64_t half = x.size(3) / 2;
  const auto elem = static_cast<int64_t>(x.element_size());
  for (int vec = static_cast<int>(16 / elem); vec > 1; vec /= 2) {
    bool ok = half % vec == 0 && reinterpret_cast<std::uintptr_t>(x.data_ptr()) % (vec * elem) == 0;
    for (int d = 0; d < 3; ++d) ok = ok && (x.size(d) == 1 || x.stride(d) % vec == 0);
    const std::uintptr_t table_align = 4u * static_cast<std::uintptr_t>(vec < 4 ? vec : 4);
    ok = ok && reinterpret_cast<std::uintptr_t>(cos_tab) % table_align == 0 &&
         reinterpret_cast<std::uintptr_t>(sin_tab) % table_align == 0;
    if (ok) return vec;
  }
  return 1;
}

template <typename T, bool BACKWARD>
void RopeDispatchVec(int vec, T* y, const T* x, const float* c, const float* s, int64_t B, int64_t seq, int64_t H,
                     int64_t hd, int64_t sb, int64_t st, int64_t sh, cudaStream_t stream) {
  switch (vec) {
    case 8:
      if constexpr (16 / sizeof(T) >= 8) {
        rope<T, 8, BACKWARD>(y, x, c, s, B, seq, H, hd, sb, st, sh, stream);
        return;
      }
      break;
    case 4: rope<T, 4, BACKWARD>(y, x, c, s, B, seq, H, hd, sb, st, sh, stream); return;
    case 2: rope<T, 2, BACKWARD>(y, x, c, s, B, seq, H, hd, sb, st, sh, stream); return;
    default: break;
  }
  rope<T, 1, BACKWARD>(y, x, c, s, B, seq, H, hd, sb, st, sh, stream);
}

// The shared entry point: forward, or the backward (rotation by -angle) of the cotangent in x_in.
at::Tensor Rope(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool backward) {
  const char* name = backward ? "RopeBackward" : "RopeForward";
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 4, name, ": input must be a (B, T, H, hd) CUDA tensor, got ",
              x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kBFloat16 || x_in.scalar_type() == at::kFloat, name,
              ": input must be bf16 or fp32, got ", x_in.scalar_type());
  const int64_t B = x_in.size(0), seq = x_in.size(1), H = x_in.size(2), hd = x_in.size(3);
  TORCH_CHECK(hd % 2 == 0, name, ": head_dim must be even, got ", hd);
  for (const at::Tensor* tab : {&cos_in, &sin_in}) {
    TORCH_CHECK(tab->device() == x_in.device() && tab->scalar_type() == at::kFloat && tab->dim() == 2 &&
                    tab->size(0) >= seq && tab->size(1) == hd / 2,
                name, ": cos and sin must be fp32 (>= ", seq, ", ", hd / 2, ") tables on the input's device, got ",
                tab->scalar_type(), " ", tab->sizes(), " on ", tab->device());
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  // The kernel reads rows through (B, T, H) strides but wants each head vector contiguous.
  at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  at::Tensor y = EmptyCuda({B, seq, H, hd}, x.options());  // (B, T, H, hd) contiguous
  if (y.numel() == 0) return y;
  // Rows 0..T-1, row-major (a slice of a contiguous table is a view, no copy).
  at::Tensor c = cos_in.narrow(0, 0, seq).contiguous();  // (T, hd/2)
  at::Tensor s = sin_in.narrow(0, 0, seq).contiguous();  // (T, hd/2)
  const float* cp = c.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  const int vec = PickVec(x, cp, sp);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto* yp, const auto* xp) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
    if (backward) {
      RopeDispatchVec<T, true>(vec, yp, xp, cp, sp, B, seq, H, hd, x.stride(0), x.stride(1), x.stride(2), stream);
    } else {
      RopeDispatchVec<T, false>(vec, yp, xp, cp, sp, B, seq, H, hd, x.stride(0), x.stride(1), x.stride(2), stream);
    }
  };
  if (x.scalar_type() == at::kBFloat16) {
    launch(reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()));
  } else {
    launch(y.data_ptr<float>(), x.data_ptr<float>());
  }
  return y;
}

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry points

at::Tensor RopeForward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return Rope(x, cos, sin, /*backward=*/false);
}

at::Tensor RopeBackward(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin) {
  return Rope(dy, cos, sin, /*backward=*/true);
}

}  // namespace moe::kernels
