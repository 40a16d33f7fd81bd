// What every launch of the block kernels takes: the layout of the images and the key material, as
// plain sizes and pointers. Torch-free and CUDA-free, so that the torch-facing wrappers of both
// backends, the CUDA launchers and host runs of the kernels' code (csrc/testing/) share it.
#pragma once

#include <stdint.h>

namespace kpfast::kernels {

// An NCHW image batch and the memory order of the output (same sizes, dense: a fresh tensor or an
// out= buffer of that layout).
struct BlockLayout {
  int64_t N, C, H, W, M;    // batch, channels, height, width, block size; L = M * M * C
  int64_t sN, sC, sH, sW;   // input strides in elements (any layout, views included)
  bool channels_last_out;   // output is channels_last, else NCHW-contiguous
};

// The key material of both ops, and the per-key data that the packing step (pack_key and
// pack_block in block_groups.h) derives from it for the element loops.
struct BlockKeys {
  const int64_t* src;        // [K, L] contiguous: destination position l reads source position src[k, l]
  const int64_t* key_index;  // [N]: key set of each image, or nullptr (then K == 1)
  int64_t K;
  int64_t* offsets;          // [K * L]: input offset of each source from its block's first element
  int64_t* table_rows;       // [K * L] on the table path (else nullptr): where each position's table starts
  // Block scrambling, or both nullptr (output block b reads input block b):
  const int64_t* block_src;  // [K, B] contiguous: output block b reads input block block_src[k, b]
  int64_t* block_offsets;    // [K * B]: input offset of each source block from its image's first element
};

// The compute type of a float image (at::opmath_type): float, and double for double.
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };
template <typename T> using math_t = typename MathType<T>::type;

}  // namespace kpfast::kernels
