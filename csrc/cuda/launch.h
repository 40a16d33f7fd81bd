// How the CUDA ops call the torch-free launchers of csrc/kernels/: the CUDA element type of a
// dtype, and a launch on the current stream of the images' device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "kernels/block_ops.h"

namespace kpfast::cuda {

template <typename T>
struct Tag {
  using type = T;
};

// fn(Tag<T>{}) with the CUDA element type of a dtype the checks allowed (at::Half data is passed
// as __half, at::BFloat16 as __nv_bfloat16: same bits). uint8 only where kBytes.
template <bool kBytes, typename Fn>
cudaError_t with_cuda_type(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: return fn(Tag<float>{});
    case at::kDouble: return fn(Tag<double>{});
    case at::kHalf: return fn(Tag<__half>{});
    case at::kBFloat16: return fn(Tag<__nv_bfloat16>{});
    case at::kByte:
      if constexpr (kBytes) return fn(Tag<uint8_t>{});
      [[fallthrough]];
    default: TORCH_CHECK(false, "kpfast: unexpected dtype ", t);
  }
}

// launch(stream) on the current stream of x's device (set after the checks, which name a tensor on
// the wrong device); a failed launch is an error naming the op. Never synchronises.
template <typename Launch>
void launch_on_device_of(const char* op, const at::Tensor& x, Launch&& launch) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaError_t err = launch(c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace kpfast::cuda
