// CUDA kernel of kpfast::block_affine: one gather and one affine map (+ Normalize) per output
// element, bit-identical to cpu/block_affine.cpp (the shared kpfast::affine in the same compute
// type, its product kept out of an FMA).
#include "block_ops.h"

namespace kpfast::kernels {
namespace {

using detail::Pack;
using detail::Traversal;

template <typename T>
struct AffineArgs {
  const T* x;
  const int64_t* offsets;    // [K * L] from step 1
  const int64_t* key_index;  // [N] or nullptr
  int64_t K;
  const math_t<T>* coef;     // [K * L][4]: scale, bias, sub, div
  T* out;
};

template <typename T, int G>
KPFAST_HD void affine_group(const Traversal& t, const AffineArgs<T>& a, int64_t group) {
  using detail::ldg;
  detail::GroupCursor at(t, a.key_index, a.K, group);
  const int64_t* offsets = a.offsets + at.kL;
  const math_t<T>* coef = a.coef + at.kL * kNumAffineParams;
  Pack<T, G> v;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < G; ++j, at.next(t)) {
    const math_t<T> value = detail::to_math(ldg(a.x + at.in_block + ldg(offsets + at.l)));
    const math_t<T>* c = coef + int64_t(at.l) * kNumAffineParams;
    v.v[j] = detail::from_math<T>(
        affine(value, ldg(c + kScale), ldg(c + kBias), ldg(c + kSub), ldg(c + kDiv)));
  }
  *reinterpret_cast<Pack<T, G>*>(a.out + group * G) = v;
}

template <typename T, int G>
__global__ void __launch_bounds__(detail::kThreads) block_affine_kernel(Traversal t, AffineArgs<T> a) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < t.groups; g += stride)
    affine_group<T, G>(t, a, g);
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
  if (layout.N * layout.C * layout.H * layout.W == 0) return cudaSuccess;
  const cudaError_t err = detail::pack_keys<false>(layout, keys, nullptr, 0, 0, nullptr, stream);
  if (err != cudaSuccess) return err;
  const AffineArgs<T> a{x, keys.offsets, keys.key_index, keys.K, coef, out};
  return detail::can_vectorise(layout, out) ? launch_affine<T, detail::kGroup<T>>(layout, a, stream)
                                            : launch_affine<T, 1>(layout, a, stream);
}

#define KPFAST_INSTANTIATE_AFFINE(T)                                                           \
  template cudaError_t block_affine<T>(const BlockLayout&, const BlockKeys&, const T*,         \
                                       const math_t<T>*, T*, cudaStream_t);
KPFAST_INSTANTIATE_AFFINE(float)
KPFAST_INSTANTIATE_AFFINE(double)
KPFAST_INSTANTIATE_AFFINE(__half)
KPFAST_INSTANTIATE_AFFINE(__nv_bfloat16)

}  // namespace kpfast::kernels
