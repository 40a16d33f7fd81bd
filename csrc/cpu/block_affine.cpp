// CPU kernel of kpfast::block_affine: one gather and one affine map (+ Normalize) per element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/block_rows.h"

namespace kpfast::cpu {
namespace {

at::Tensor block_affine_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& params,
                            int64_t block_size, const std::optional<at::Tensor>& key_index) {
  const BlockGeometry g = check_block_affine(x, src, params, block_size, key_index);

  const std::vector<int64_t> rel = source_offsets(src, g, x);
  const std::vector<int64_t> keys = image_keys(key_index, g);
  const at::Tensor p = params.contiguous();
  const at::MemoryFormat fmt = output_format(x);
  at::Tensor out = empty_output(x, x.scalar_type(), fmt);
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_affine", [&] {
    using math_t = at::opmath_type<scalar_t>;
    // Parameters regrouped per (key, position) in the compute type: [K * L][4].
    const double* pp = p.const_data_ptr<double>();
    std::vector<math_t> coef(g.K * g.L * kNumAffineParams);
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t j = 0; j < kNumAffineParams; ++j)
        for (int64_t l = 0; l < g.L; ++l)
          coef[(k * g.L + l) * kNumAffineParams + j] =
              static_cast<math_t>(pp[(k * kNumAffineParams + j) * g.L + l]);
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_run(g, x, fmt == at::MemoryFormat::ChannelsLast, keys, rel,
                 [&](int64_t oi, int64_t os, int64_t ii, int64_t is, int64_t n, int64_t kl) {
                   const math_t* c = coef.data() + kl * kNumAffineParams;
                   const math_t scale = c[kScale], bias = c[kBias], sub = c[kSub], div = c[kDiv];
                   for (int64_t i = 0; i < n; ++i)
                     o[oi + i * os] = static_cast<scalar_t>(
                         affine<math_t>(static_cast<math_t>(in[ii + i * is]), scale, bias, sub, div));
                 });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CPU, m) { m.impl("block_affine", &block_affine_cpu); }

}  // namespace kpfast::cpu
