#include "core/precision/fp8.h"

#include <limits>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/fp8_quantize.h"
#endif

namespace moe {

Status ParseFp8Recipe(const std::string& name, Fp8Recipe* out) {
  if (name == "tensorwise") {
    *out = Fp8Recipe::kTensorwise;
  } else if (name == "rowwise") {
    *out = Fp8Recipe::kRowwise;
  } else {
    return Status::InvalidArgument("precision.fp8_recipe = \"" + name + "\": expected tensorwise | rowwise");
  }
  return Status::OK();
}

const char* Fp8RecipeName(Fp8Recipe r) { return r == Fp8Recipe::kTensorwise ? "tensorwise" : "rowwise"; }

double Fp8Max(torch::ScalarType fp8) {
  switch (fp8) {
    case torch::kFloat8_e4m3fn: return 448.0;
    case torch::kFloat8_e5m2: return 57344.0;
    default: TORCH_CHECK(false, "Fp8Max: not an FP8 dtype: ", c10::toString(fp8));
  }
}

torch::Tensor AmaxToScale(const torch::Tensor& amax, torch::ScalarType fp8) {
  return torch::full({}, Fp8Max(fp8), amax.options().dtype(torch::kFloat32)) /
         amax.to(torch::kFloat32).clamp_min(kAmaxEps);
}

torch::Tensor SaturatingCast(const torch::Tensor& x, torch::ScalarType fp8) {
  const double m = Fp8Max(fp8);
  return x.to(torch::kFloat32).clamp(-m, m).to(fp8);
}

torch::Tensor Fp8Tensor::Dequantize() const { return data.to(torch::kFloat32) / scale; }

Fp8Tensor Quantize(const torch::Tensor& x, torch::ScalarType fp8, Fp8Granularity g) {
#if defined(MOE_WITH_KERNELS)
  // CUDA bf16/fp32, contiguous or a transpose (every operand the FP8 GEMMs quantise): the fused
  // kernels, the same bytes and scales as below in one or two passes instead of ATen's several.
  if (OnKernelDevice(x) && kernels::Fp8QuantizeSupported(x, fp8)) {
    kernels::Fp8Quantized k = kernels::Fp8Quantize(x, fp8, g == Fp8Granularity::kRow, kAmaxEps);
    return Fp8TensorOf(k);
  }
#endif
  const double inf = std::numeric_limits<double>::infinity();
  torch::Tensor amax;  // fp32; one reduction kernel, no |x| temporary
  if (g == Fp8Granularity::kTensor) {
    amax = x.numel() == 0 ? torch::zeros({}, x.options().dtype(torch::kFloat32))
                          : at::linalg_vector_norm(x, inf, std::nullopt, /*keepdim=*/false, torch::kFloat32);
  } else {
    const int64_t last = x.dim() - 1;
    amax = at::linalg_vector_norm(x, inf, torch::IntArrayRef{last}, /*keepdim=*/true, torch::kFloat32);
  }
  Fp8Tensor q;
  q.scale = AmaxToScale(amax, fp8);
  q.data = torch::empty(x.sizes(), x.options().dtype(fp8));  // contiguous in x's logical shape
  // A 0-dim scale would not take part in type promotion (the product would be rounded to bf16
  // first); viewed as (1,) it does, so the multiply runs in fp32 and only the store rounds.
  const torch::Tensor s = q.scale.dim() == 0 ? q.scale.view({1}) : q.scale;
  at::mul_out(q.data, x, s);
  return q;
}

torch::Tensor ScaledMm(const torch::Tensor& a, const torch::Tensor& inv_a, const torch::Tensor& b,
                       const torch::Tensor& inv_b, torch::ScalarType out_dtype, bool fast_accum) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0 || K == 0) return torch::zeros({M, N}, a.options().dtype(out_dtype));
  const bool rowwise = inv_a.dim() != 0 || inv_b.dim() != 0;
  if (a.is_cuda()) {
    // The sm90 rowwise kernel writes bf16 only.
    const torch::ScalarType od = rowwise ? torch::kBFloat16 : out_dtype;
    torch::Tensor y = at::_scaled_mm(a, b, inv_a, inv_b, std::nullopt, std::nullopt, od, fast_accum);
    return od == out_dtype ? y : y.to(out_dtype);
  }
  if (!rowwise) return at::_scaled_mm(a, b, inv_a, inv_b, std::nullopt, std::nullopt, out_dtype);
  // CPU rowwise: the FP8 products accumulate in fp32 under unit scales, then the scales apply,
  // as the GPU kernel's epilogue does.
  torch::Tensor one = torch::ones({}, inv_a.options());
  torch::Tensor acc = at::_scaled_mm(a, b, one, one, std::nullopt, std::nullopt, torch::kFloat32);  // (M, N)
  return (acc * inv_a * inv_b).to(out_dtype);
}

}  // namespace moe
