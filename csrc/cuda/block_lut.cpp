// CUDA entry of kpfast::block_lut (compiled by the host compiler): the checks of the CPU op, then
// the torch-free launcher of csrc/kernels/block_lut.cu on the current stream. Never synchronises.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launch_args.h"

namespace kpfast::cuda {
namespace {

at::Tensor block_lut_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                          const at::Tensor& tables, int64_t block_size, double qscale,
                          c10::string_view rounding, const std::optional<at::Tensor>& key_index) {
  const BlockGeometry g = check_block_lut(x, src, table_id, tables, block_size, key_index);
  const int32_t round_mode = parse_rounding("kpfast.block_lut", rounding);
  const int64_t T = tables.size(0), V = tables.size(1);

  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = output_format(x);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(tables.scalar_type()), fmt);
  if (out.numel() == 0) return out;

  // Contiguous key material, and the scratch of the packing step (source offsets, table starts).
  const at::Tensor ids = table_id.contiguous(), tab = tables.contiguous();
  at::Tensor table_rows = at::empty({g.K * g.L}, x.options().dtype(at::kLong));
  const KeyArgs keys(src, key_index, g, x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  cudaError_t err = cudaSuccess;
  with_cuda_type</*kBytes=*/true>(x.scalar_type(), [&](auto in_tag) {
    with_cuda_type</*kBytes=*/false>(tab.scalar_type(), [&](auto out_tag) {
      using In = typename decltype(in_tag)::type;
      using Out = typename decltype(out_tag)::type;
      err = kernels::block_lut<In, Out>(
          block_layout(x, g, fmt), keys.view, static_cast<const In*>(x.const_data_ptr()), ids.const_data_ptr<int64_t>(),
          table_rows.mutable_data_ptr<int64_t>(), static_cast<const Out*>(tab.const_data_ptr()), T,
          V, qscale, round_mode, static_cast<Out*>(out.mutable_data_ptr()), stream);
    });
  });
  TORCH_CHECK(err == cudaSuccess, "kpfast.block_lut: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CUDA, m) { m.impl("block_lut", &block_lut_cuda); }

}  // namespace kpfast::cuda
