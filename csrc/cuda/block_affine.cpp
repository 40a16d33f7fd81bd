// CUDA entry of kpfast::block_affine (compiled by the host compiler): the checks of the CPU op,
// then the torch-free launcher of csrc/kernels/block_affine.cu on the current stream.
// Never synchronises, so the op can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launch_args.h"

namespace kpfast::cuda {
namespace {

at::Tensor block_affine_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& params,
                             int64_t block_size, const std::optional<at::Tensor>& key_index) {
  const BlockGeometry g = check_block_affine(x, src, params, block_size, key_index);

  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = output_format(x);
  at::Tensor out = at::empty(x.sizes(), x.options(), fmt);
  if (out.numel() == 0) return out;

  // Parameters regrouped per (key, position) in the compute type, [K, L, 4], by tensor ops on the
  // device (the same double -> float rounding as the CPU op's static_cast).
  const at::ScalarType math_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor coef = params.to(math_type).permute({0, 2, 1}).contiguous();
  const KeyArgs keys(src, key_index, g, x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  cudaError_t err = cudaSuccess;
  with_cuda_type</*kBytes=*/false>(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Math = kernels::math_t<T>;
    err = kernels::block_affine<T>(block_layout(x, g, fmt), keys.view, static_cast<const T*>(x.const_data_ptr()),
                                   static_cast<const Math*>(coef.const_data_ptr()),
                                   static_cast<T*>(out.mutable_data_ptr()), stream);
  });
  TORCH_CHECK(err == cudaSuccess, "kpfast.block_affine: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CUDA, m) { m.impl("block_affine", &block_affine_cuda); }

}  // namespace kpfast::cuda
