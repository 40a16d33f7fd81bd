// CUDA kernel of kpfast::block_affine: one gather and one affine map (+ Normalize) per output
// element, bit-identical to cpu/block_affine.cpp (the shared kpfast::affine in the same compute
// type, its product kept out of an FMA). The element code is affine_group (block_groups.h).
#include "block_ops.h"
#include "launch.cuh"

namespace kpfast::kernels {
namespace {

using detail::AffineArgs;
using detail::Traversal;

template <typename T, int G>
__global__ void __launch_bounds__(detail::kThreads) block_affine_kernel(Traversal t, AffineArgs<T> a) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < t.groups; g += stride)
    detail::affine_group<T, G>(t, a, g);
}

template <typename T, int G>
cudaError_t launch_affine(const BlockLayout& layout, const AffineArgs<T>& a, cudaStream_t stream) {
  const Traversal t = Traversal::make(layout, G);
  int blocks = 0;
  const cudaError_t err = detail::grid_size(block_affine_kernel<T, G>, 0, t.groups, blocks);
  if (err != cudaSuccess) return err;
  block_affine_kernel<T, G><<<blocks, detail::kThreads, 0, stream>>>(t, a);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t block_affine(const BlockLayout& layout, const BlockKeys& keys, const T* x,
                         const math_t<T>* coef, T* out, cudaStream_t stream) {
  if (detail::empty_launch(layout)) return cudaSuccess;
  if (detail::out_of_limits(layout, 0)) return cudaErrorInvalidValue;
  const cudaError_t err = detail::pack_keys<false>(layout, keys, nullptr, 0, 0, stream);
  if (err != cudaSuccess) return err;
  const AffineArgs<T> a{x, keys, coef, out};
  return detail::with_group_size(layout, out, [&](auto G) {
    return launch_affine<T, decltype(G)::value>(layout, a, stream);
  });
}

#define KPFAST_INSTANTIATE_AFFINE(T)                                                           \
  template cudaError_t block_affine<T>(const BlockLayout&, const BlockKeys&, const T*,         \
                                       const math_t<T>*, T*, cudaStream_t);
KPFAST_INSTANTIATE_AFFINE(float)
KPFAST_INSTANTIATE_AFFINE(double)
KPFAST_INSTANTIATE_AFFINE(__half)
KPFAST_INSTANTIATE_AFFINE(__nv_bfloat16)

}  // namespace kpfast::kernels
