// CUDA entry of kpfast::block_lut (compiled by the host compiler): the checked call shared with the
// CPU op (op_args.h), then the torch-free launcher of csrc/kernels/block_lut.cu on the current
// stream. Never synchronises, so the op can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cuda/launch.h"
#include "op_args.h"

namespace kpfast::cuda {
namespace {

void block_lut_cuda(const LutCall& call, const at::Tensor& x) {
  launch_on_device_of("kpfast.block_lut", x, [&](cudaStream_t stream) {
    return with_cuda_type</*kBytes=*/true>(x.scalar_type(), [&](auto in) {
      return with_cuda_type</*kBytes=*/false>(call.tables.scalar_type(), [&](auto out) {
        using In = typename decltype(in)::type;
        using Out = typename decltype(out)::type;
        return kernels::block_lut<In, Out>(
            call.layout, call.keys, static_cast<const In*>(x.const_data_ptr()), call.table_id.const_data_ptr<int64_t>(),
            static_cast<const Out*>(call.tables.const_data_ptr()), call.T, call.V, call.qscale, call.rounding,
            static_cast<Out*>(call.out.mutable_data_ptr()), stream);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CUDA, m) {
  m.impl("block_lut", &block_lut_op<block_lut_cuda>);
  m.impl("block_lut.out", &block_lut_out_op<block_lut_cuda>);
}

}  // namespace kpfast::cuda
