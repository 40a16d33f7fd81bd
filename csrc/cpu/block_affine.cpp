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
    for_each_run(call.layout, call.keys, x.const_data_ptr<scalar_t>(), call.out.mutable_data_ptr<scalar_t>(),
                 [&](int64_t kl) {
                   const math_t* c = coef + kl * kNumAffineParams;
                   return [scale = c[kScale], bias = c[kBias], sub = c[kSub], div = c[kDiv]](scalar_t v) {
                     return static_cast<scalar_t>(affine<math_t>(static_cast<math_t>(v), scale, bias, sub, div));
                   };
                 });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CPU, m) {
  m.impl("block_affine", &block_affine_op<block_affine_cpu>);
  m.impl("block_affine.out", &block_affine_out_op<block_affine_cpu>);
}

}  // namespace kpfast::cpu
