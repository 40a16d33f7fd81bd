// CUDA entry of kpfast::block_affine (compiled by the host compiler): the checked call shared with
// the CPU op (op_args.h), then the torch-free launcher of csrc/kernels/block_affine.cu on the
// current stream. Never synchronises, so the op can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cuda/launch.h"
#include "op_args.h"

namespace kpfast::cuda {
namespace {

void block_affine_cuda(const AffineCall& call, const at::Tensor& x) {
  launch_on_device_of("kpfast.block_affine", x, [&](cudaStream_t stream) {
    return with_cuda_type</*kBytes=*/false>(x.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      return kernels::block_affine<T>(call.layout, call.keys, static_cast<const T*>(x.const_data_ptr()),
                                      static_cast<const kernels::math_t<T>*>(call.coef.const_data_ptr()),
                                      static_cast<T*>(call.out.mutable_data_ptr()), stream);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CUDA, m) {
  m.impl("block_affine", &block_affine_op<block_affine_cuda>);
  m.impl("block_affine.out", &block_affine_out_op<block_affine_cuda>);
}

}  // namespace kpfast::cuda
