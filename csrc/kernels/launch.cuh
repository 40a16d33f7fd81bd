// The device side of a launch, shared by block_lut.cu and block_affine.cu (nvcc only): the packing
// kernel of step 1 and the grid size of grid-stride loops. The per-entry and per-group code they
// run is in block_groups.h.
#pragma once

#include <cuda_runtime_api.h>

#include "block_groups.h"

namespace kpfast::kernels::detail {

constexpr int kThreads = 256;  // threads per block

// Step 1 over the `positions` = K * L (key, position) entries (table_id, T and V only on the table
// path), followed by the K * B (key, block) entries of a block scrambling, if any.
template <bool kTables>
__global__ void __launch_bounds__(kThreads)
    pack_keys_kernel(BlockLayout b, BlockKeys keys, int64_t positions, int64_t count,
                     const int64_t* __restrict__ table_id, int64_t T, int64_t V) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const int32_t faults = i < positions ? pack_key<kTables>(b, keys, table_id, T, V, i)
                                         : pack_block(b, keys, i - positions);
    KPFAST_KERNEL_ASSERT(!(faults & kBadSource), "kpfast: src holds a block position outside [0, L)");
    KPFAST_KERNEL_ASSERT(!(faults & kBadTable), "kpfast: table_id holds a table outside [0, T)");
    KPFAST_KERNEL_ASSERT(!(faults & kBadBlock), "kpfast: block_src holds a block outside [0, B)");
  }
}

// Blocks of a grid-stride loop over `work` items: no more than fit on the device at once, so that
// all of them run in a single wave (host-side queries only; fine during graph capture).
template <typename Kernel>
cudaError_t grid_size(Kernel kernel, size_t shared_bytes, int64_t work, int& blocks) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared_bytes);
  const int64_t needed = (work + kThreads - 1) / kThreads;
  const int64_t most = int64_t(sms) * (per_sm > 0 ? per_sm : 1);
  blocks = static_cast<int>(needed < most ? needed : most);
  if (blocks < 1) blocks = 1;
  return err;
}

// Runs step 1 on `stream`.
template <bool kTables>
cudaError_t pack_keys(const BlockLayout& b, const BlockKeys& keys, const int64_t* table_id, int64_t T,
                      int64_t V, cudaStream_t stream) {
  const int64_t positions = keys.K * b.M * b.M * b.C;
  const int64_t count = positions + (keys.block_src != nullptr ? keys.K * blocks_per_image(b) : 0);
  int blocks = 0;
  const cudaError_t err = grid_size(pack_keys_kernel<kTables>, 0, count, blocks);
  if (err != cudaSuccess) return err;
  pack_keys_kernel<kTables><<<blocks, kThreads, 0, stream>>>(b, keys, positions, count, table_id, T, V);
  return cudaGetLastError();
}

// Whether a launch has nothing to do, or arguments the wrappers should have refused.
inline bool empty_launch(const BlockLayout& b) { return b.N * b.C * b.H * b.W == 0; }
inline bool out_of_limits(const BlockLayout& b, int64_t V) {
  return b.M * b.M * b.C > kMaxBlockPositions || V > kMaxLevels;
}

}  // namespace kpfast::kernels::detail
