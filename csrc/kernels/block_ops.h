// Torch-free launchers of the CUDA block kernels (block_lut.cu, block_affine.cu), called by the
// torch-facing wrappers in csrc/cuda/. Device pointers and a cudaStream_t in, the launch's
// cudaError_t out; nothing here allocates or synchronises, so the ops can be graph-captured.
//
// Every launcher runs the two steps of block_groups.h on `stream`: a small kernel that packs the
// per-key data of the K * L (key, position) entries into keys.offsets (and keys.table_rows), and
// with block scrambling that of the K * B (key, block) entries into keys.block_offsets, then the
// element kernel over groups of output elements. Bad key values (src, table_id, key_index,
// block_src out of range) are clamped into range, so that no thread ever reads out of bounds, and
// stop the kernel with a device-side assert. The wrappers check everything else (op_checks.h)
// before launching. Below, x[b, l] is position l of block b of an image, and with block scrambling
// (keys.block_src) output block b reads input block block_src[k, b], otherwise block b.
#pragma once

#include <cuda_runtime_api.h>

#include "block_args.h"

// CUDA's 16-bit float types (cuda_fp16.h, cuda_bf16.h), only declared here: the wrappers pass
// at::Half / at::BFloat16 data reinterpreted as these (same bits) and never need those headers.
struct __half;
struct __nv_bfloat16;

namespace kpfast::kernels {

// out[b, l] = tables[table_id[k, l], level(x[block_src[k, b], src[k, l]])]: level = x for uint8 input, else
// kpfast::quantize(x, qscale, V, rounding) in math_t<In>. In: uint8_t, float, double, __half,
// __nv_bfloat16; Out: float, double, __half, __nv_bfloat16. table_id is [K, L] contiguous,
// tables [T, V] contiguous (V >= 256 for uint8 input); keys.table_rows is scratch [K * L].
template <typename In, typename Out>
cudaError_t block_lut(const BlockLayout& layout, const BlockKeys& keys, const In* x,
                      const int64_t* table_id, const Out* tables, int64_t T, int64_t V, double qscale,
                      int32_t rounding, Out* out, cudaStream_t stream);

// out[b, l] = (scale * x[block_src[k, b], src[k, l]] + bias - sub) / div in math_t<T> (kpfast::affine). T: float,
// double, __half, __nv_bfloat16. coef is [K, L, 4] contiguous (scale, bias, sub, div), already
// converted to math_t<T>.
template <typename T>
cudaError_t block_affine(const BlockLayout& layout, const BlockKeys& keys, const T* x,
                         const math_t<T>* coef, T* out, cudaStream_t stream);

}  // namespace kpfast::kernels
