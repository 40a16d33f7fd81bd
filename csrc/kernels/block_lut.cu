// CUDA kernel of kpfast::block_lut: one gather and one table lookup per output element,
// bit-identical to cpu/block_lut.cpp (the lookup copies a table entry; the level is the shared
// kpfast::quantize in the same compute type).
#include <type_traits>

#include "block_ops.h"

namespace kpfast::kernels {
namespace {

using detail::Pack;
using detail::Traversal;

// Tables up to this size are copied to shared memory by every block: the lookups are random
// gathers, which shared memory serves far better than L1. 24 KiB still lets 8 blocks share an SM
// (the kernels need about 40-60 registers per thread, which allows 4-6 blocks of 256 threads).
constexpr int64_t kMaxStagedTableBytes = 24 * 1024;

template <typename In, typename Out>
struct LutArgs {
  const In* x;
  const int64_t* offsets;     // [K * L] from step 1
  const int64_t* key_index;   // [N] or nullptr
  int64_t K;
  const int64_t* table_rows;  // [K * L] from step 1: where the table of each position starts
  const Out* tables;          // [T, V]
  int64_t table_size;         // T * V
  int32_t levels;             // V
  math_t<In> qscale;
  int32_t rounding;
  bool staged;                // tables copied to shared memory
  Out* out;
};

// The table level of an input value.
template <typename In>
KPFAST_HD int32_t level_of(In v, math_t<In> qscale, int32_t levels, int32_t rounding) {
  if constexpr (std::is_same_v<In, uint8_t>) {
    return v;  // uint8 images need V >= 256, checked by the wrapper
  } else {
    return quantize<math_t<In>>(detail::to_math(v), qscale, levels, rounding);
  }
}

template <typename In, typename Out, int G>
KPFAST_HD void lut_group(const Traversal& t, const LutArgs<In, Out>& a, const Out* tables,
                         int64_t group) {
  detail::GroupCursor at(t, a.key_index, a.K, group);
  const int64_t* offsets = a.offsets + at.kL;
  const int64_t* rows = a.table_rows + at.kL;
  Pack<Out, G> v;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < G; ++j, at.next(t)) {
    const In value = detail::ldg(a.x + at.in_block + detail::ldg(offsets + at.l));
    v.v[j] = tables[detail::ldg(rows + at.l) + level_of<In>(value, a.qscale, a.levels, a.rounding)];
  }
  *reinterpret_cast<Pack<Out, G>*>(a.out + group * G) = v;
}

template <typename In, typename Out, int G>
__global__ void __launch_bounds__(detail::kThreads) block_lut_kernel(Traversal t, LutArgs<In, Out> a) {
  extern __shared__ __align__(16) unsigned char shared[];
  const Out* tables = a.tables;
  if (a.staged) {  // the same for every thread of the block
    Out* s = reinterpret_cast<Out*>(shared);
    for (int64_t i = threadIdx.x; i < a.table_size; i += blockDim.x) s[i] = a.tables[i];
    __syncthreads();
    tables = s;
  }
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < t.groups; g += stride)
    lut_group<In, Out, G>(t, a, tables, g);
}

template <typename In, typename Out, int G>
cudaError_t launch_lut(const BlockLayout& layout, const LutArgs<In, Out>& a, cudaStream_t stream) {
  const Traversal t = Traversal::make(layout, G);
  const size_t shared = a.staged ? static_cast<size_t>(a.table_size) * sizeof(Out) : 0;
  int blocks = 0;
  const cudaError_t err = detail::grid_size(block_lut_kernel<In, Out, G>, shared, t.groups, blocks);
  if (err != cudaSuccess) return err;
  block_lut_kernel<In, Out, G><<<blocks, detail::kThreads, shared, stream>>>(t, a);
  return cudaGetLastError();
}

}  // namespace

template <typename In, typename Out>
cudaError_t block_lut(const BlockLayout& layout, const BlockKeys& keys, const In* x,
                      const int64_t* table_id, int64_t* table_rows, const Out* tables, int64_t T,
                      int64_t V, double qscale, int32_t rounding, Out* out, cudaStream_t stream) {
  if (layout.N * layout.C * layout.H * layout.W == 0) return cudaSuccess;
  if (V > INT32_MAX) return cudaErrorInvalidValue;  // levels are int32 (the wrapper allows 2^24)
  const cudaError_t err = detail::pack_keys<true>(layout, keys, table_id, T, V, table_rows, stream);
  if (err != cudaSuccess) return err;

  LutArgs<In, Out> a{};
  a.x = x;
  a.offsets = keys.offsets;
  a.key_index = keys.key_index;
  a.K = keys.K;
  a.table_rows = table_rows;
  a.tables = tables;
  a.table_size = T * V;
  a.levels = static_cast<int32_t>(V);
  a.qscale = static_cast<math_t<In>>(qscale);
  a.rounding = rounding;
  a.staged = a.table_size * int64_t(sizeof(Out)) <= kMaxStagedTableBytes;
  a.out = out;
  return detail::can_vectorise(layout, out) ? launch_lut<In, Out, detail::kGroup<Out>>(layout, a, stream)
                                            : launch_lut<In, Out, 1>(layout, a, stream);
}

#define KPFAST_INSTANTIATE_LUT(In, Out)                                                            \
  template cudaError_t block_lut<In, Out>(const BlockLayout&, const BlockKeys&, const In*,         \
                                          const int64_t*, int64_t*, const Out*, int64_t, int64_t, \
                                          double, int32_t, Out*, cudaStream_t);
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
