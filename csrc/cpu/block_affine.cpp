// CPU kernel of kpfast::block_affine: one gather and one affine map (+ Normalize) per element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/block_rows.h"

namespace kpfast::cpu {
namespace {

void block_affine_cpu(const AffineCall& call, const at::Tensor& x) {
  pack_keys<false>("kpfast.block_affine", call);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_affine", [&] {
    using math_t = at::opmath_type<scalar_t>;
    const math_t* coef = call.coef.const_data_ptr<math_t>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = call.out.mutable_data_ptr<scalar_t>();
    for_each_run(call.layout, call.keys, [&](int64_t oi, int64_t os, int64_t ii, int64_t is, int64_t n, int64_t kl) {
      const math_t* c = coef + kl * kNumAffineParams;
      const math_t scale = c[kScale], bias = c[kBias], sub = c[kSub], div = c[kDiv];
      for (int64_t i = 0; i < n; ++i)
        o[oi + i * os] = static_cast<scalar_t>(affine<math_t>(static_cast<math_t>(in[ii + i * is]), scale, bias, sub, div));
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CPU, m) { m.impl("block_affine", &block_affine_op<block_affine_cpu>); }

}  // namespace kpfast::cpu
