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
    out_t* out = call.out.mutable_data_ptr<out_t>();
    if (x.scalar_type() == at::kByte) {
      for_each_run(call.layout, call.keys, x.const_data_ptr<uint8_t>(), out, [&](int64_t kl) {
        return [table = tab + rows[kl]](uint8_t v) { return table[v]; };
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_lut_in", [&] {
        using math_t = at::opmath_type<scalar_t>;
        const math_t scale = static_cast<math_t>(call.qscale);
        const int32_t levels = static_cast<int32_t>(call.V), mode = call.rounding;
        for_each_run(call.layout, call.keys, x.const_data_ptr<scalar_t>(), out, [&](int64_t kl) {
          return [table = tab + rows[kl], scale, levels, mode](scalar_t v) {
            return table[quantize<math_t>(static_cast<math_t>(v), scale, levels, mode)];
          };
        });
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CPU, m) {
  m.impl("block_lut", &block_lut_op<block_lut_cpu>);
  m.impl("block_lut.out", &block_lut_out_op<block_lut_cpu>);
}

}  // namespace kpfast::cpu
