// kernels/fp8_rows_to_cols.cu against the same arithmetic in ATen, bit for bit, on random rows:
// groups that are empty, shorter than the 16-slot padding, and spanning several 64-slot tiles;
// column counts with a partial 256-column tile. The padded layout is the kernel's own (computed
// from the offsets on the GPU), checked against the host's.
#include "tests/kernels/kernel_test_util.h"

#include <vector>

#include "kernels/fp8_quantize.h"
#include "kernels/fp8_rows_to_cols.h"

namespace fp8_rows_to_cols_test {

namespace {

// The padded layout of kernels/fp8_rows_to_cols.h, on the host: each group's rows
// in slots padded to a multiple of 16 (at least 16), the rest of Mp = ceil16(M) + 16 E padding.
struct Padded {
  std::vector<int64_t> src;  // (Mp,) row, or M for padding
  std::vector<int> pad_end;  // (E,)
  std::vector<int> grp;      // (Mp,) group of each slot (-1 past the last group)
};
Padded Pad(const std::vector<int>& counts, int64_t M) {
  const int E = static_cast<int>(counts.size());
  Padded p;
  const int64_t Mp = (M + 15) / 16 * 16 + 16 * E;
  p.src.assign(Mp, M);
  p.grp.assign(Mp, -1);
  int64_t start = 0, slot = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t padded = std::max<int64_t>(16, (counts[e] + 15) / 16 * 16);
    for (int64_t i = 0; i < padded; ++i) {
      if (i < counts[e]) p.src[slot + i] = start + i;
      p.grp[slot + i] = e;
    }
    slot += padded;
    start += counts[e];
    p.pad_end.push_back(static_cast<int>(slot));
  }
  return p;
}

}  // namespace

TEST_CASE("kernels: Fp8RowsToPaddedCols re-casts FP8 rows into padded columns with one scale per group, as ATen",
          "[kernels][fp8_rows_to_cols]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(21);
  struct Case {
    std::vector<int> counts;
    int64_t C;
  };
  const Case cases[] = {
      {{37, 0, 100, 3, 60}, 144},          // an empty group, one of 3 rows, a partial column tile
      {{300, 1, 250}, 2048},               // groups over several 64-slot tiles
      {{0, 0, 16}, 16},                    // one 16-byte vector per row
      {{4096, 4096, 100, 5000}, 272},      // large groups, a tile and 16 columns
      {{17, 0, 0, 0, 0, 0, 0, 33}, 4096},  // the wide model's hidden, mostly empty groups
  };
  for (const Case& c : cases) {
    int64_t M = 0;
    for (int n : c.counts) M += n;
    DYNAMIC_SECTION("M " << M << " C " << c.C << " E " << c.counts.size()) {
      const auto cuda = at::TensorOptions().device(at::kCUDA);
      // Rows whose sizes differ by up to 2^12 within a group, so that factors span many binades.
      at::Tensor x = at::randn({M, c.C}, cuda.dtype(at::kFloat)) * at::pow(2.0, at::randint(-6, 7, {M, 1}, cuda));
      const moe::kernels::Fp8Quantized rows = moe::kernels::Fp8Quantize(x, at::kFloat8_e4m3fn, true, 1e-12);
      std::vector<int> ends;
      int acc = 0;
      for (int n : c.counts) ends.push_back(acc += n);
      const Padded p = Pad(c.counts, M);
      const at::Tensor offs = at::tensor(ends, at::kInt).to(at::kCUDA);
      const at::Tensor src = at::tensor(p.src, at::kLong).to(at::kCUDA);
      REQUIRE(moe::kernels::Fp8PaddedSlots(M, static_cast<int64_t>(c.counts.size())) == src.size(0));
      REQUIRE(moe::kernels::Fp8RowsToPaddedColsSupported(rows.data));

      moe_test::PoisonAllocator(c.C * src.size(0) / 4 + 1, at::kFloat);
      const moe::kernels::Fp8PaddedCols got = moe::kernels::Fp8RowsToPaddedCols(rows.data, rows.inv_scale, offs);
      CHECK(at::equal(got.pad_end.cpu(), at::tensor(p.pad_end, at::kInt)));

      // Reference: g_e = max of the group's inverse row scales; each row times inv / g_e in fp32,
      // one cast; rows gathered into their slots (zeros for padding) and transposed.
      const at::Tensor inv = rows.inv_scale.view({-1});  // (M,)
      std::vector<float> g(c.counts.size(), 0.f);
      const at::Tensor inv_h = inv.cpu();
      for (size_t e = 0, start = 0; e < c.counts.size(); start += c.counts[e], ++e) {
        for (int r = 0; r < c.counts[e]; ++r) g[e] = std::max(g[e], inv_h[start + r].item<float>());
      }
      const at::Tensor g_t = at::tensor(g, at::kFloat).to(at::kCUDA);  // (E,)
      std::vector<int64_t> row_grp;
      for (size_t e = 0; e < c.counts.size(); ++e) row_grp.insert(row_grp.end(), c.counts[e], static_cast<int64_t>(e));
      const at::Tensor factor = inv / g_t.index_select(0, at::tensor(row_grp, at::kLong).to(at::kCUDA));  // (M,)
      const at::Tensor recast = (rows.data.to(at::kFloat) * factor.unsqueeze(1)).clamp(-448, 448).to(at::kFloat8_e4m3fn);
      const at::Tensor padded = at::cat({recast.view(at::kByte), at::zeros({1, c.C}, cuda.dtype(at::kByte))})
                                    .index_select(0, src);  // (Mp, C)
      REQUIRE(got.data.sizes() == at::IntArrayRef({c.C, src.size(0)}));
      CHECK(at::equal(got.data.view(at::kByte), padded.t().contiguous()));
      CHECK(at::equal(got.inv_scale, g_t.repeat_interleave(c.C)));
      // Not vacuous: most bytes are nonzero, and the re-cast changed many of them (factors < 1).
      CHECK(moe_test::NonzeroBytes(got.data) > M * c.C / 2);
      CHECK(recast.view(at::kByte).ne(rows.data.view(at::kByte)).sum().item<int64_t>() > M * c.C / 4);
      // Dequantised, every slot is within two e4m3 roundings (2 x 2^-4, relative) of the original
      // row's value, or a subnormal step of its group's scale (2^-9 g_e) near zero.
      const at::Tensor g_slot = g_t.index_select(0, at::tensor(p.grp, at::kLong).clamp_min(0).to(at::kCUDA))
                                    .to(at::kDouble).unsqueeze(0);  // (1, Mp)
      const at::Tensor deq = got.data.to(at::kDouble) * g_slot;     // (C, Mp)
      const at::Tensor orig = at::cat({rows.data.to(at::kDouble) * inv.to(at::kDouble).unsqueeze(1),
                                       at::zeros({1, c.C}, cuda.dtype(at::kDouble))})
                                  .index_select(0, src).t();  // (C, Mp)
      CHECK((deq - orig).abs().le(orig.abs() * 0.13 + g_slot / 512).all().item<bool>());
    }
  }
}

TEST_CASE("kernels: Fp8RowsToPaddedCols takes whole 16-byte rows only", "[kernels][fp8_rows_to_cols]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const auto e4m3 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat8_e4m3fn);
  CHECK(moe::kernels::Fp8RowsToPaddedColsSupported(at::empty({32, 16}, e4m3)));
  CHECK_FALSE(moe::kernels::Fp8RowsToPaddedColsSupported(at::empty({32, 24}, e4m3)));           // C % 16 != 0
  CHECK_FALSE(moe::kernels::Fp8RowsToPaddedColsSupported(at::empty({32, 32}, e4m3).narrow(1, 0, 16)));  // strided
  CHECK_FALSE(moe::kernels::Fp8RowsToPaddedColsSupported(at::empty({32, 16}, e4m3.device(at::kCPU))));
  CHECK_FALSE(moe::kernels::Fp8RowsToPaddedColsSupported(at::empty({32, 16}, e4m3.dtype(at::kFloat))));
}

}  // namespace fp8_rows_to_cols_test
