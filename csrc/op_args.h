// The torch-facing entry of each op, shared by every backend: the checks, then one op call as the
// kernels take it: the image layout, the key material with room for its packed per-key data
// (kernels::BlockKeys), the op's own arguments in the form the kernels read, and the output. The
// CPU op, the CUDA op and the host runs of the CUDA kernels' code (csrc/testing/) register
// block_lut_op / block_affine_op (and their out= forms) with their own run function, so the
// per-key data is prepared by this one piece of code for every backend; each then runs step 1 of
// kernels/block_groups.h (pack_key, pack_block) its own way, a checked loop on the CPU or a kernel
// on CUDA, and then its kernel.
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

// A fresh output, channels_last or NCHW-contiguous. A large fresh CPU output costs more in page
// faults than the kernel costs in arithmetic; asking the kernel for transparent huge pages first
// (where THP is in "madvise" mode, as on common Linux setups) makes that 512 times fewer faults.
// (An out= buffer that is used again avoids the faults altogether.)
inline at::Tensor empty_output(const at::Tensor& x, at::ScalarType dtype, at::MemoryFormat format) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype), format);
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

// What the kernels write (a dense tensor, in NCHW or channels_last order): the out= buffer itself
// where it is such a tensor; else a fresh one, in the input's memory format without out= (so
// channels_last stays channels_last) and in the buffer's otherwise, copied into it afterwards.
inline at::Tensor kernel_output(const at::Tensor& x, at::ScalarType dtype, const std::optional<at::Tensor>& out) {
  if (!out.has_value()) return empty_output(x, dtype, x.suggest_memory_format());
  if (out->is_contiguous() || out->is_contiguous(at::MemoryFormat::ChannelsLast)) return *out;
  return empty_output(x, dtype, out->suggest_memory_format());
}

// What every call of either op holds. The tensors own the memory `keys` points to.
struct OpCall {
  BlockGeometry g;
  at::Tensor out;  // what the kernels write (kernel_output)
  kernels::BlockLayout layout;
  at::Tensor src, key_index, block_src;              // contiguous key material
  at::Tensor offsets, table_rows, block_offsets;     // per-key data: [K * L], [K * L], [K * B]
  kernels::BlockKeys keys;

  OpCall(const at::Tensor& x, const BlockGeometry& geometry, const at::Tensor& src_,
         const std::optional<at::Tensor>& key_index_, const std::optional<at::Tensor>& block_src_,
         at::ScalarType out_dtype, bool tables, const std::optional<at::Tensor>& given_out)
      : g(geometry),
        out(kernel_output(x, out_dtype, given_out)),
        layout{g.N, g.C, g.H, g.W, g.M, x.stride(0), x.stride(1), x.stride(2), x.stride(3), !out.is_contiguous()},
        src(src_.contiguous()),
        key_index(key_index_.has_value() ? key_index_->contiguous() : at::Tensor()),
        block_src(block_src_.has_value() ? block_src_->contiguous() : at::Tensor()),
        offsets(at::empty({g.K * g.L}, src.options())),
        table_rows(tables ? at::empty({g.K * g.L}, src.options()) : at::Tensor()),
        block_offsets(block_src.defined() ? at::empty({block_src.numel()}, src.options()) : at::Tensor()),
        keys{src.const_data_ptr<int64_t>(),
             key_index.defined() ? key_index.const_data_ptr<int64_t>() : nullptr,
             g.K,
             offsets.mutable_data_ptr<int64_t>(),
             tables ? table_rows.mutable_data_ptr<int64_t>() : nullptr,
             block_src.defined() ? block_src.const_data_ptr<int64_t>() : nullptr,
             block_src.defined() ? block_offsets.mutable_data_ptr<int64_t>() : nullptr} {}
};

// Runs a backend's kernel for a checked call unless the output is empty, then copies into an out=
// buffer that the kernels could not write in place.
template <typename Call>
void run_call(void (*run)(const Call&, const at::Tensor&), const Call& call, const at::Tensor& x,
              const std::optional<at::Tensor>& out) {
  if (call.out.numel() > 0) run(call, x);
  if (out.has_value() && !out->is_same(call.out)) out->copy_(call.out);
}

// kpfast::block_lut: out[b, l] = tables[table_id[k, l], level(x[block_src[k, b], src[k, l]])].
struct LutCall : OpCall {
  at::Tensor table_id, tables;  // contiguous
  int64_t T, V;
  double qscale;
  int32_t rounding;

  LutCall(const at::Tensor& x, const BlockGeometry& g, const at::Tensor& src, const at::Tensor& table_id_,
          const at::Tensor& tables_, double qscale_, int32_t rounding_, const std::optional<at::Tensor>& key_index,
          const std::optional<at::Tensor>& block_src, const std::optional<at::Tensor>& out)
      : OpCall(x, g, src, key_index, block_src, tables_.scalar_type(), /*tables=*/true, out),
        table_id(table_id_.contiguous()),
        tables(tables_.contiguous()),
        T(tables.size(0)),
        V(tables.size(1)),
        qscale(qscale_),
        rounding(rounding_) {}
};

using LutKernel = void (*)(const LutCall&, const at::Tensor&);

// All checks of kpfast::block_lut (and of its out= buffer), in the order of the schema, then the
// call, run by `run` (a backend's kernel). Returns what the kernels wrote.
inline at::Tensor block_lut_run(LutKernel run, const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                                const at::Tensor& tables, int64_t block_size, double qscale, c10::string_view rounding,
                                const std::optional<at::Tensor>& key_index, const std::optional<at::Tensor>& block_src,
                                const std::optional<at::Tensor>& out) {
  const char* op = "kpfast.block_lut";
  const BlockGeometry g = check_block_input(op, x, block_size, src);
  check_lut_tables(op, x, g, table_id, tables);
  const int32_t mode = check_quantisation(op, qscale, rounding);
  check_key_index(op, key_index, g, x);
  check_block_src(op, block_src, g, x);
  if (out.has_value()) {
    check_out(op, *out, x, tables.scalar_type());
    check_out_memory(op, *out, {{"x", &x}, {"src", &src}, {"table_id", &table_id}, {"tables", &tables},
                                {"key_index", given(key_index)}, {"block_src", given(block_src)}});
  }
  const LutCall call(x, g, src, table_id, tables, qscale, mode, key_index, block_src, out);
  run_call(run, call, x, out);
  return call.out;
}

// The entries of kpfast::block_lut and kpfast::block_lut.out for a backend whose kernel is kRun.
template <LutKernel kRun>
at::Tensor block_lut_op(const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                        const at::Tensor& tables, int64_t block_size, double qscale, c10::string_view rounding,
                        const std::optional<at::Tensor>& key_index, const std::optional<at::Tensor>& block_src) {
  return block_lut_run(kRun, x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src,
                       std::nullopt);
}

template <LutKernel kRun>
at::Tensor& block_lut_out_op(const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                             const at::Tensor& tables, int64_t block_size, double qscale, c10::string_view rounding,
                             const std::optional<at::Tensor>& key_index, const std::optional<at::Tensor>& block_src,
                             at::Tensor& out) {
  block_lut_run(kRun, x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src, out);
  return out;
}

// kpfast::block_affine: out[b, l] = (scale * x[block_src[k, b], src[k, l]] + bias - sub) / div.
struct AffineCall : OpCall {
  at::Tensor coef;  // [K, L, 4] (scale, bias, sub, div) in the compute type, contiguous

  AffineCall(const at::Tensor& x, const BlockGeometry& g, const at::Tensor& src, const at::Tensor& params,
             const std::optional<at::Tensor>& key_index, const std::optional<at::Tensor>& block_src,
             const std::optional<at::Tensor>& out)
      : OpCall(x, g, src, key_index, block_src, x.scalar_type(), /*tables=*/false, out),
        // params regrouped per (key, position) and rounded to the compute type (at::opmath_type):
        // one copy, on the images' device.
        coef(at::empty({g.K, g.L, kNumAffineParams},
                       params.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat))
                 .copy_(params.transpose(1, 2))) {}
};

using AffineKernel = void (*)(const AffineCall&, const at::Tensor&);

// As block_lut_run, for kpfast::block_affine.
inline at::Tensor block_affine_run(AffineKernel run, const at::Tensor& x, const at::Tensor& src,
                                   const at::Tensor& params, int64_t block_size,
                                   const std::optional<at::Tensor>& key_index,
                                   const std::optional<at::Tensor>& block_src, const std::optional<at::Tensor>& out) {
  const char* op = "kpfast.block_affine";
  const BlockGeometry g = check_block_input(op, x, block_size, src);
  check_affine_params(op, x, g, params);
  check_key_index(op, key_index, g, x);
  check_block_src(op, block_src, g, x);
  if (out.has_value()) {
    check_out(op, *out, x, x.scalar_type());
    check_out_memory(op, *out, {{"x", &x}, {"src", &src}, {"params", &params}, {"key_index", given(key_index)},
                                {"block_src", given(block_src)}});
  }
  const AffineCall call(x, g, src, params, key_index, block_src, out);
  run_call(run, call, x, out);
  return call.out;
}

template <AffineKernel kRun>
at::Tensor block_affine_op(const at::Tensor& x, const at::Tensor& src, const at::Tensor& params, int64_t block_size,
                           const std::optional<at::Tensor>& key_index, const std::optional<at::Tensor>& block_src) {
  return block_affine_run(kRun, x, src, params, block_size, key_index, block_src, std::nullopt);
}

template <AffineKernel kRun>
at::Tensor& block_affine_out_op(const at::Tensor& x, const at::Tensor& src, const at::Tensor& params,
                                int64_t block_size, const std::optional<at::Tensor>& key_index,
                                const std::optional<at::Tensor>& block_src, at::Tensor& out) {
  block_affine_run(kRun, x, src, params, block_size, key_index, block_src, out);
  return out;
}

}  // namespace kpfast
