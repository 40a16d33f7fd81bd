// CUDA kernel of kpfast::block_lut: one gather and one table lookup per output element,
// bit-identical to cpu/block_lut.cpp (the lookup copies a table entry; the level is the shared
// kpfast::quantize in the same compute type). The element code is lut_group (block_groups.h).
#include "block_ops.h"
#include "launch.cuh"

namespace kpfast::kernels {
namespace {

using detail::LutArgs;
using detail::Traversal;

// Tables up to this size are copied to shared memory by every block: the lookups are random
// gathers, which shared memory serves far better than L1. 24 KiB still lets 8 blocks share an SM
// (the kernels need about 40-60 registers per thread, which allows 4-6 blocks of 256 threads).
constexpr int64_t kMaxStagedTableBytes = 24 * 1024;

template <typename In, typename Out, int G>
__global__ void __launch_bounds__(detail::kThreads)
    block_lut_kernel(Traversal t, LutArgs<In, Out> a, bool staged) {
  extern __shared__ __align__(16) unsigned char shared[];
  const Out* tables = a.tables;
  if (staged) {  // the same for every thread of the block
    Out* s = reinterpret_cast<Out*>(shared);
    for (int64_t i = threadIdx.x; i < a.table_size; i += blockDim.x) s[i] = a.tables[i];
    __syncthreads();
    tables = s;
  }
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < t.groups; g += stride)
    detail::lut_group<In, Out, G>(t, a, tables, g);
}

template <typename In, typename Out, int G>
cudaError_t launch_lut(const BlockLayout& layout, const LutArgs<In, Out>& a, cudaStream_t stream) {
  const Traversal t = Traversal::make(layout, G);
  const bool staged = a.table_size * int64_t(sizeof(Out)) <= kMaxStagedTableBytes;
  const size_t shared = staged ? static_cast<size_t>(a.table_size) * sizeof(Out) : 0;
  int blocks = 0;
  const cudaError_t err = detail::grid_size(block_lut_kernel<In, Out, G>, shared, t.groups, blocks);
  if (err != cudaSuccess) return err;
  block_lut_kernel<In, Out, G><<<blocks, detail::kThreads, shared, stream>>>(t, a, staged);
  return cudaGetLastError();
}

}  // namespace

template <typename In, typename Out>
cudaError_t block_lut(const BlockLayout& layout, const BlockKeys& keys, const In* x,
                      const int64_t* table_id, const Out* tables, int64_t T, int64_t V, double qscale,
                      int32_t rounding, Out* out, cudaStream_t stream) {
  if (detail::empty_launch(layout)) return cudaSuccess;
  if (detail::out_of_limits(layout, V)) return cudaErrorInvalidValue;
  const cudaError_t err = detail::pack_keys<true>(layout, keys, table_id, T, V, stream);
  if (err != cudaSuccess) return err;
  const LutArgs<In, Out> a = detail::lut_args(keys, x, tables, T, V, qscale, rounding, out);
  return detail::with_group_size(layout, out, [&](auto G) {
    return launch_lut<In, Out, decltype(G)::value>(layout, a, stream);
  });
}

#define KPFAST_INSTANTIATE_LUT(In, Out)                                                          \
  template cudaError_t block_lut<In, Out>(const BlockLayout&, const BlockKeys&, const In*,       \
                                          const int64_t*, const Out*, int64_t, int64_t, double, \
                                          int32_t, Out*, cudaStream_t);
#define KPFAST_INSTANTIATE_LUT_OUTPUTS(In) \
  KPFAST_INSTANTIATE_LUT(In, float)        \
  KPFAST_INSTANTIATE_LUT(In, double)       \
  KPFAST_INSTANTIATE_LUT(In, __half)       \
  KPFAST_INSTANTIATE_LUT(In, __nv_bfloat16)

KPFAST_INSTANTIATE_LUT_OUTPUTS(uint8_t)
KPFAST_INSTANTIATE_LUT_OUTPUTS(float)
KPFAST_INSTANTIATE_LUT_OUTPUTS(double)
KPFAST_INSTANTIATE_LUT_OUTPUTS(__half)
KPFAST_INSTANTIATE_LUT_OUTPUTS(__nv_bfloat16)

}  // namespace kpfast::kernels
