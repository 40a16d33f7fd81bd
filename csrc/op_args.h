// The torch-facing entry of each op, shared by every backend: the checks, then one op call as the
// kernels take it: the image layout, the key material with room for its packed per-key data
// (kernels::BlockKeys), the op's own arguments in the form the kernels read, and the output. The
// CPU op, the CUDA op and the host runs of the CUDA kernels' code (csrc/testing/) register
// block_lut_op / block_affine_op with their own run function, so the per-key data is prepared by
// this one piece of code for every backend; each then runs step 1 of kernels/block_groups.h
// (pack_key) its own way, a checked loop on the CPU or a kernel on CUDA, and then its kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/block_args.h"
#include "op_checks.h"

namespace kpfast {

// The output, in the input's memory format (channels_last stays channels_last). A large fresh CPU
// output costs more in page faults than the kernel costs in arithmetic; asking the kernel for
// transparent huge pages first (where THP is in "madvise" mode, as on common Linux setups) makes
// that 512 times fewer faults.
inline at::Tensor empty_output(const at::Tensor& x, at::ScalarType dtype, bool channels_last) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype),
                             channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (out.is_cpu()) {
    constexpr uintptr_t kHuge = uintptr_t(1) << 21;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t end = begin + out.nbytes();
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint
  }
#endif
  return out;
}

// What every call of either op holds. The tensors own the memory `keys` points to.
struct OpCall {
  BlockGeometry g;
  kernels::BlockLayout layout;
  at::Tensor src, key_index, offsets, table_rows;  // contiguous key material, per-key data [K * L]
  kernels::BlockKeys keys;
  at::Tensor out;

  OpCall(const at::Tensor& x, const BlockGeometry& geometry, const at::Tensor& src_,
         const std::optional<at::Tensor>& key_index_, at::ScalarType out_dtype, bool tables)
      : g(geometry),
        layout{g.N, g.C, g.H, g.W, g.M, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
               x.suggest_memory_format() == at::MemoryFormat::ChannelsLast},
        src(src_.contiguous()),
        key_index(key_index_.has_value() ? key_index_->contiguous() : at::Tensor()),
        offsets(at::empty({g.K * g.L}, src.options())),
        table_rows(tables ? at::empty({g.K * g.L}, src.options()) : at::Tensor()),
        keys{src.const_data_ptr<int64_t>(), key_index.defined() ? key_index.const_data_ptr<int64_t>() : nullptr,
             g.K, offsets.mutable_data_ptr<int64_t>(), tables ? table_rows.mutable_data_ptr<int64_t>() : nullptr},
        out(empty_output(x, out_dtype, layout.channels_last_out)) {}
};

// kpfast::block_lut: out[l] = tables[table_id[k, l], level(x[src[k, l]])].
struct LutCall : OpCall {
  at::Tensor table_id, tables;  // contiguous
  int64_t T, V;
  double qscale;
  int32_t rounding;

  LutCall(const at::Tensor& x, const BlockGeometry& g, const at::Tensor& src, const at::Tensor& table_id_,
          const at::Tensor& tables_, double qscale_, int32_t rounding_, const std::optional<at::Tensor>& key_index)
      : OpCall(x, g, src, key_index, tables_.scalar_type(), /*tables=*/true),
        table_id(table_id_.contiguous()),
        tables(tables_.contiguous()),
        T(tables.size(0)),
        V(tables.size(1)),
        qscale(qscale_),
        rounding(rounding_) {}
};

// The entry of kpfast::block_lut for every backend: all checks, in the order of the schema, then
// run(call, x) unless the output is empty. A backend registers block_lut_op<its run>.
template <void (*kRun)(const LutCall&, const at::Tensor&)>
at::Tensor block_lut_op(const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                        const at::Tensor& tables, int64_t block_size, double qscale, c10::string_view rounding,
                        const std::optional<at::Tensor>& key_index) {
  const char* op = "kpfast.block_lut";
  const BlockGeometry g = check_block_input(op, x, block_size, src);
  check_lut_tables(op, x, g, table_id, tables);
  const int32_t mode = check_quantisation(op, qscale, rounding);
  check_key_index(op, key_index, g, x);
  const LutCall call(x, g, src, table_id, tables, qscale, mode, key_index);
  if (call.out.numel() > 0) kRun(call, x);
  return call.out;
}

// kpfast::block_affine: out[l] = (scale * x[src[k, l]] + bias - sub) / div.
struct AffineCall : OpCall {
  at::Tensor coef;  // [K, L, 4] (scale, bias, sub, div) in the compute type, contiguous

  AffineCall(const at::Tensor& x, const BlockGeometry& g, const at::Tensor& src, const at::Tensor& params,
             const std::optional<at::Tensor>& key_index)
      : OpCall(x, g, src, key_index, x.scalar_type(), /*tables=*/false),
        // params regrouped per (key, position) and rounded to the compute type (at::opmath_type):
        // one copy, on the images' device.
        coef(at::empty({g.K, g.L, kNumAffineParams},
                       params.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat))
                 .copy_(params.transpose(1, 2))) {}
};

// The entry of kpfast::block_affine for every backend, as block_lut_op.
template <void (*kRun)(const AffineCall&, const at::Tensor&)>
at::Tensor block_affine_op(const at::Tensor& x, const at::Tensor& src, const at::Tensor& params, int64_t block_size,
                           const std::optional<at::Tensor>& key_index) {
  const char* op = "kpfast.block_affine";
  const BlockGeometry g = check_block_input(op, x, block_size, src);
  check_affine_params(op, x, g, params);
  check_key_index(op, key_index, g, x);
  const AffineCall call(x, g, src, params, key_index);
  if (call.out.numel() > 0) kRun(call, x);
  return call.out;
}

}  // namespace kpfast
