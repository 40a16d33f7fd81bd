// CPU kernel of kpfast::block_lut: one gather and one table lookup per output element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/block_rows.h"

namespace kpfast::cpu {
namespace {

void block_lut_cpu(const LutCall& call, const at::Tensor& x) {
  pack_keys<true>("kpfast.block_lut", call, call.table_id.const_data_ptr<int64_t>(), call.T, call.V);
  const int64_t* rows = call.keys.table_rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.tables.scalar_type(), "block_lut_out", [&] {
    using out_t = scalar_t;
    const out_t* tab = call.tables.const_data_ptr<out_t>();
    out_t* o = call.out.mutable_data_ptr<out_t>();
    if (x.scalar_type() == at::kByte) {
      const uint8_t* in = x.const_data_ptr<uint8_t>();
      for_each_run(call.layout, call.keys, [&](int64_t oi, int64_t os, int64_t ii, int64_t is, int64_t n, int64_t kl) {
        const out_t* table = tab + rows[kl];
        for (int64_t i = 0; i < n; ++i) o[oi + i * os] = table[in[ii + i * is]];
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_lut_in", [&] {
        using math_t = at::opmath_type<scalar_t>;
        const scalar_t* in = x.const_data_ptr<scalar_t>();
        const math_t scale = static_cast<math_t>(call.qscale);
        const int32_t levels = static_cast<int32_t>(call.V), mode = call.rounding;
        for_each_run(call.layout, call.keys, [&](int64_t oi, int64_t os, int64_t ii, int64_t is, int64_t n, int64_t kl) {
          const out_t* table = tab + rows[kl];
          for (int64_t i = 0; i < n; ++i)
            o[oi + i * os] = table[quantize<math_t>(static_cast<math_t>(in[ii + i * is]), scale, levels, mode)];
        });
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CPU, m) { m.impl("block_lut", &block_lut_op<block_lut_cpu>); }

}  // namespace kpfast::cpu
