// CPU kernel of kpfast::block_lut: one gather and one table lookup per output element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/block_rows.h"

namespace kpfast::cpu {
namespace {

at::Tensor block_lut_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                         const at::Tensor& tables, int64_t block_size, double qscale,
                         c10::string_view rounding, const std::optional<at::Tensor>& key_index) {
  const BlockGeometry g = check_block_lut(x, src, table_id, tables, block_size, key_index);
  const int32_t round_mode = parse_rounding("kpfast.block_lut", rounding);
  const int64_t T = tables.size(0), V = tables.size(1);

  const std::vector<int64_t> rel = source_offsets(src, g, x);
  const std::vector<int64_t> keys = image_keys(key_index, g);
  const at::Tensor ids = table_id.contiguous();
  const at::Tensor tab = tables.contiguous();
  const at::MemoryFormat fmt = output_format(x);
  at::Tensor out = empty_output(x, tables.scalar_type(), fmt);
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tab.scalar_type(), "block_lut_out", [&] {
    using out_t = scalar_t;
    // Row start of the table of every (key, position), so the inner loop does one lookup.
    std::vector<const out_t*> row(g.K * g.L);
    const int64_t* id = ids.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < g.K * g.L; ++i) {
      TORCH_CHECK(id[i] >= 0 && id[i] < T, "kpfast.block_lut: table_id must be in [0, ", T, "), found ", id[i]);
      row[i] = tab.const_data_ptr<out_t>() + id[i] * V;
    }
    out_t* o = out.mutable_data_ptr<out_t>();
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    if (x.scalar_type() == at::kByte) {
      const uint8_t* in = x.const_data_ptr<uint8_t>();
      for_each_run(g, x, cl, keys, rel, [&](int64_t oi, int64_t os, int64_t ii, int64_t is, int64_t n, int64_t kl) {
        const out_t* table = row[kl];
        for (int64_t i = 0; i < n; ++i) o[oi + i * os] = table[in[ii + i * is]];
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_lut_in", [&] {
        using math_t = at::opmath_type<scalar_t>;
        const scalar_t* in = x.const_data_ptr<scalar_t>();
        const math_t scale = static_cast<math_t>(qscale);
        const int32_t levels = static_cast<int32_t>(V);
        for_each_run(g, x, cl, keys, rel, [&](int64_t oi, int64_t os, int64_t ii, int64_t is, int64_t n, int64_t kl) {
          const out_t* table = row[kl];
          for (int64_t i = 0; i < n; ++i)
            o[oi + i * os] = table[quantize<math_t>(static_cast<math_t>(in[ii + i * is]), scale, levels, round_mode)];
        });
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CPU, m) { m.impl("block_lut", &block_lut_cpu); }

}  // namespace kpfast::cpu
