// CUDA entry of kpfast::block_affine (compiled by the host compiler): the checks of the CPU op,
// then the torch-free launcher of csrc/kernels/block_affine.cu on the current stream.
// Never synchronises, so the op can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/block_ops.h"
#include "op_checks.h"

namespace kpfast::cuda {
namespace {

template <typename T>
struct Tag {
  using type = T;
};

// Calls fn(Tag<T>{}) with the CUDA element type of a float dtype (at::Half data is passed as
// __half, at::BFloat16 as __nv_bfloat16: same bits).
template <typename Fn>
void with_cuda_float_type(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: return fn(Tag<float>{});
    case at::kDouble: return fn(Tag<double>{});
    case at::kHalf: return fn(Tag<__half>{});
    case at::kBFloat16: return fn(Tag<__nv_bfloat16>{});
    default: TORCH_CHECK(false, "kpfast.block_affine: unexpected dtype ", t);
  }
}

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
  const at::Tensor src_c = src.contiguous();
  const at::Tensor keys_c = key_index.has_value() ? key_index->contiguous() : at::Tensor();
  at::Tensor offsets = at::empty({g.K * g.L}, x.options().dtype(at::kLong));  // packing scratch
  const kernels::BlockLayout layout{g.N, g.C, g.H, g.W, g.M,
                                    x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                                    fmt == at::MemoryFormat::ChannelsLast};
  const kernels::BlockKeys keys{src_c.const_data_ptr<int64_t>(),
                                keys_c.defined() ? keys_c.const_data_ptr<int64_t>() : nullptr, g.K,
                                offsets.mutable_data_ptr<int64_t>()};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  cudaError_t err = cudaSuccess;
  with_cuda_float_type(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Math = kernels::math_t<T>;
    err = kernels::block_affine<T>(layout, keys, static_cast<const T*>(x.const_data_ptr()),
                                   static_cast<const Math*>(coef.const_data_ptr()),
                                   static_cast<T*>(out.mutable_data_ptr()), stream);
  });
  TORCH_CHECK(err == cudaSuccess, "kpfast.block_affine: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, CUDA, m) { m.impl("block_affine", &block_affine_cuda); }

}  // namespace kpfast::cuda
