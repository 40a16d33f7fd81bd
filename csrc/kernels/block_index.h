// Per-element index and value math of the block transforms, shared by the CPU kernels (g++) and
// the CUDA kernels (nvcc), so that the CPU tests also exercise the arithmetic of the CUDA path.
// Torch-free on purpose: only <cstdint> and the C math functions.
//
// Layout (semantics.md §1): pixel (y, x, c) lies in block (y / M, x / M) at block position
//     l = ((y % M) * M + (x % M)) * C + c        (channel fastest; L = M * M * C positions)
// and the blocks of an image are numbered row-major, b = (y / M) * (W / M) + x / M (B of them).
// Every transform chain is "out[l] = f_l(in[src[l]])" with f_l a 256-entry table (integer or
// quantised input) or an affine map (float input), see semantics.md §5.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define KPFAST_HD __host__ __device__ __forceinline__
#else
#define KPFAST_HD inline
#endif

namespace kpfast {

// How a float input is turned into a table level: the reference truncates (floor).
enum Rounding : int32_t { kRoundFloor = 0, kRoundNearest = 1 };

// The four per-position parameters of the affine path, in this order along dim 1 of `params`.
enum AffineParam : int32_t { kScale = 0, kBias = 1, kSub = 2, kDiv = 3, kNumAffineParams = 4 };

// Limits the wrappers check: in-block positions are 32-bit in the CUDA kernels, and every level
// below 2^24 is exact in float, so quantize compares and clamps levels exactly.
constexpr int64_t kMaxBlockPositions = INT32_MAX;
constexpr int64_t kMaxLevels = int64_t(1) << 24;

KPFAST_HD int64_t block_position(int64_t ym, int64_t xm, int64_t c, int64_t M, int64_t C) {
  return (ym * M + xm) * C + c;
}

struct BlockCoord {
  int64_t ym, xm, c;
};

KPFAST_HD BlockCoord block_coord(int64_t l, int64_t M, int64_t C) {
  const int64_t pixel = l / C;
  return BlockCoord{pixel / M, pixel % M, l % C};
}

// Offset of block position l from its block's first element, for a tensor with strides sC, sH, sW.
KPFAST_HD int64_t block_offset(int64_t l, int64_t M, int64_t C, int64_t sC, int64_t sH, int64_t sW) {
  const BlockCoord p = block_coord(l, M, C);
  return p.c * sC + p.ym * sH + p.xm * sW;
}

// Offset of block b (row-major over a grid `blocks_w` blocks wide) from the image's first element,
// for a tensor with strides sH, sW: where block scrambling finds a source block.
KPFAST_HD int64_t image_block_offset(int64_t b, int64_t blocks_w, int64_t M, int64_t sH, int64_t sW) {
  const int64_t by = b / blocks_w;
  return by * M * sH + (b - by * blocks_w) * M * sW;
}

// A product that is never fused with a following add into an FMA (nvcc contracts by default),
// so that CPU and CUDA round every step alike.
#if defined(__CUDA_ARCH__)
KPFAST_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
KPFAST_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
#else
KPFAST_HD float mul_rn(float a, float b) { return a * b; }
KPFAST_HD double mul_rn(double a, double b) { return a * b; }
#endif

KPFAST_HD float round_down(float v) { return floorf(v); }
KPFAST_HD double round_down(double v) { return floor(v); }
KPFAST_HD float round_even(float v) { return rintf(v); }  // ties to even, as torch.round
KPFAST_HD double round_even(double v) { return rint(v); }

// Table level of a float value: rounding(v * scale) clamped to [0, levels - 1]; NaN -> 0.
// With scale 255 and floor this is the reference's floor(255 * clamp(v, 0, 1)).
template <typename T>
KPFAST_HD int32_t quantize(T v, T scale, int32_t levels, int32_t rounding) {
  const T t = rounding == kRoundFloor ? round_down(mul_rn(v, scale)) : round_even(mul_rn(v, scale));
  if (!(t > T(0))) return 0;  // negatives and NaN
  if (t >= T(levels - 1)) return levels - 1;
  return static_cast<int32_t>(t);
}

// The affine path: a transform value, then Normalize as torchvision does it (sub, then divide).
template <typename T>
KPFAST_HD T affine(T x, T scale, T bias, T sub, T div) {
  return (mul_rn(scale, x) + bias - sub) / div;
}

}  // namespace kpfast
