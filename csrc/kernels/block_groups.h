// The per-entry and per-group code of the CUDA block kernels, __host__ __device__: nvcc compiles it
// into the kernels of block_lut.cu and block_affine.cu, and a host compiler compiles the very same
// source for the CPU, where a test runs every group of a launch and compares it with the CPU op
// (csrc/testing/kernels_on_host.cpp). Torch-free; the CUDA headers only under nvcc.
//
// A launch (block_ops.h) runs two steps:
//   1. pack_key over the K * L (key, position) entries: the input offset of each source position
//      from its block's first element and, on the table path, where its table starts; with block
//      scrambling also pack_block over the K * B (key, block) entries: the input offset of each
//      source block from its image's first element;
//   2. lut_group / affine_group over groups of G consecutive OUTPUT elements in output memory order
//      (coalesced, vectorised writes), which gather their inputs through the offsets of step 1.
// Bad key values are clamped into range, so that nothing ever reads out of bounds, and reported:
// pack_key and pack_block return them as fault bits, GroupCursor through KPFAST_KERNEL_ASSERT.
#pragma once

#include <cassert>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "block_args.h"
#include "block_index.h"

// A bad key value in the element step stops the kernel with a device-side assert: cudaErrorAssert,
// "device-side assert triggered", and the CUDA context is unusable afterwards, as after torch's own
// index asserts. Deliberately not compiled out by NDEBUG on the device; checking on the host would
// need a synchronisation. Host runs use a plain assert unless they define their own.
#if !defined(KPFAST_KERNEL_ASSERT)
#if defined(__CUDA_ARCH__)
#define KPFAST_KERNEL_ASSERT(cond, msg)                                                   \
  do {                                                                                    \
    if (!(cond)) __assert_fail(msg, __FILE__, static_cast<unsigned>(__LINE__), __func__); \
  } while (0)
#else
#define KPFAST_KERNEL_ASSERT(cond, msg) assert((cond) && msg)
#endif
#endif

namespace kpfast::kernels::detail {

// Clamps i into [0, size) (size >= 1); true if it already was there.
KPFAST_HD bool clamp_index(int64_t& i, int64_t size) {
  if (i >= 0 && i < size) return true;
  i = i < 0 ? 0 : size - 1;
  return false;
}

// Read-only load (the non-coherent cache path on the GPU).
template <typename T>
KPFAST_HD T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// ---------------------------------------------------------------------------------------------
// Step 1: the per-key data.

// Fault bits of pack_key.
enum KeyFault : int32_t { kKeyOk = 0, kBadSource = 1, kBadTable = 2, kBadBlock = 4 };

// Entry i = k * L + l: keys.offsets[i] = block_offset(src[i]) and, on the table path,
// keys.table_rows[i] = table_id[i] * V. Returns the faults of the entry (values clamped).
template <bool kTables>
KPFAST_HD int32_t pack_key(const BlockLayout& b, const BlockKeys& keys, const int64_t* table_id,
                           int64_t T, int64_t V, int64_t i) {
  int32_t faults = kKeyOk;
  int64_t s = keys.src[i];
  if (!clamp_index(s, b.M * b.M * b.C)) faults |= kBadSource;
  keys.offsets[i] = block_offset(s, b.M, b.C, b.sC, b.sH, b.sW);
  if constexpr (kTables) {
    int64_t id = table_id[i];
    if (!clamp_index(id, T)) faults |= kBadTable;
    keys.table_rows[i] = id * V;
  }
  return faults;
}

// The blocks of one image: B = (H / M) * (W / M), numbered row-major.
KPFAST_HD int64_t blocks_per_row(const BlockLayout& b) { return b.W / b.M; }
KPFAST_HD int64_t blocks_per_image(const BlockLayout& b) { return (b.H / b.M) * blocks_per_row(b); }

// Entry i = k * B + b of a block scrambling (keys.block_src given): keys.block_offsets[i] =
// image_block_offset(block_src[i]). Returns the faults of the entry (the value clamped).
KPFAST_HD int32_t pack_block(const BlockLayout& b, const BlockKeys& keys, int64_t i) {
  int64_t s = keys.block_src[i];
  const bool ok = clamp_index(s, blocks_per_image(b));
  keys.block_offsets[i] = image_block_offset(s, blocks_per_row(b), b.M, b.sH, b.sW);
  return ok ? kKeyOk : kBadBlock;
}

// ---------------------------------------------------------------------------------------------
// Step 2: the traversal of the output in groups.

// n / d for a fixed d >= 1 and 0 <= n < 2^63 by a multiply-high instead of a division (a 64-bit
// division is a long software routine on the GPU, and every group of outputs needs five).
// Granlund & Montgomery's round-up method, as torch's IntDivider, widened to 64 bits.
struct Divider {
  int64_t d = 1;
  uint64_t magic = 1;
  int shift = 0;

  static Divider make(int64_t divisor) {
    Divider r;
    r.d = divisor;
    while ((uint64_t(1) << r.shift) < static_cast<uint64_t>(divisor)) ++r.shift;  // ceil(log2 d)
    const unsigned __int128 one = 1, d = static_cast<uint64_t>(divisor);
    r.magic = static_cast<uint64_t>((one << 64) * ((one << r.shift) - d) / d + 1);
    return r;
  }
  KPFAST_HD int64_t div(int64_t n) const {
    const uint64_t u = static_cast<uint64_t>(n);
#if defined(__CUDA_ARCH__)
    const uint64_t t = __umul64hi(u, magic);
#else
    const uint64_t t = static_cast<uint64_t>((static_cast<unsigned __int128>(u) * magic) >> 64);
#endif
    return static_cast<int64_t>((t + u) >> shift);  // t <= u < 2^63: the sum cannot overflow
  }
};

// How groups of G outputs map to images, rows and blocks; computed once per launch on the host.
// An output row is (n, c, y) of W elements for NCHW outputs, (n, y) of W * C for channels_last.
// Along a row, each block contributes a run of consecutive outputs whose block positions step by
// l_step: M outputs stepping by C (NCHW), or M * C outputs stepping by 1 (channels_last).
struct Traversal {
  BlockLayout b;
  int64_t L, groups, G;
  int64_t blocks_w, B;   // blocks per row of blocks, and per image
  int64_t block_step;    // input offset from one block of a row to the next: M * sW
  int32_t run, l_step;   // in-block quantities are 32-bit (L <= kMaxBlockPositions)
  Divider per_row, h, c, m, by_run;  // dividers by groups per row, H, C, M, run

  static Traversal make(const BlockLayout& b, int64_t G) {
    Traversal t;
    t.b = b;
    t.L = b.M * b.M * b.C;
    t.G = G;
    t.groups = b.N * b.C * b.H * b.W / G;
    t.blocks_w = blocks_per_row(b);
    t.B = blocks_per_image(b);
    t.block_step = b.M * b.sW;
    t.run = static_cast<int32_t>(b.channels_last_out ? b.M * b.C : b.M);
    t.l_step = static_cast<int32_t>(b.channels_last_out ? 1 : b.C);
    t.per_row = Divider::make((b.channels_last_out ? b.W * b.C : b.W) / G);
    t.h = Divider::make(b.H);
    t.c = Divider::make(b.C);
    t.m = Divider::make(b.M);
    t.by_run = Divider::make(t.run);
    return t;
  }
};

// Walks the G outputs of one group in memory order, as cpu/block_rows.h does. For the current
// output: its block position l, the key data offset kL = k * L of its image, and the input offset
// of its (source) block (the input element is at in_block + offsets[kL + l]).
struct GroupCursor {
  int64_t kL, in_block;
  int64_t in_base;            // the image's first element with block_src, else its row of blocks' first
  const int64_t* row_blocks;  // with block_src: the source block offsets of this row of blocks
  int64_t bx;                 // the current block's column
  int32_t l, p, l0;  // block position, index in the current block's run, position of a run's start

  KPFAST_HD GroupCursor(const Traversal& t, const BlockKeys& keys, int64_t group) {
    const BlockLayout& b = t.b;
    const int64_t row = t.per_row.div(group);
    const int64_t first = (group - row * t.per_row.d) * t.G;  // the first output's index in its row
    const int64_t nc = t.h.div(row), y = row - nc * b.H;
    int64_t n = nc, c = 0;
    if (!b.channels_last_out) {
      n = t.c.div(nc);
      c = nc - n * b.C;
    }
    const int64_t by = t.m.div(y), ym = y - by * b.M;
    bx = t.by_run.div(first);
    int64_t k = 0;
    if (keys.key_index != nullptr) {
      k = ldg(keys.key_index + n);
      const bool in_range = clamp_index(k, keys.K);
      KPFAST_KERNEL_ASSERT(in_range, "kpfast: key_index holds a key set outside [0, K)");
      (void)in_range;
    }
    kL = k * t.L;
    in_base = n * b.sN;
    row_blocks = nullptr;
    if (keys.block_offsets != nullptr) {
      row_blocks = keys.block_offsets + k * t.B + by * t.blocks_w;
    } else {
      in_base += by * b.M * b.sH;
    }
    enter_block(t);
    p = static_cast<int32_t>(first - bx * t.run);
    l0 = static_cast<int32_t>(block_position(ym, 0, c, b.M, b.C));
    l = l0 + p * t.l_step;
  }

  KPFAST_HD void enter_block(const Traversal& t) {
    in_block = in_base + (row_blocks != nullptr ? ldg(row_blocks + bx) : bx * t.block_step);
  }

  // On to the group's next output; never called after its last (whose row may end there).
  KPFAST_HD void next(const Traversal& t) {
    l += t.l_step;
    if (++p == t.run) {  // on to the next block of the row
      p = 0;
      l = l0;
      ++bx;
      enter_block(t);
    }
  }
};

// Outputs per group: 32 bytes, i.e. two 16-byte stores per thread and loop iteration, when every
// output row holds whole groups and `out` is 16-byte aligned; otherwise one output per group.
template <typename Out>
constexpr int kGroup = 32 / sizeof(Out);

template <typename Out>
bool can_vectorise(const BlockLayout& b, const Out* out) {
  const int64_t row = b.channels_last_out ? b.W * b.C : b.W;
  return row % kGroup<Out> == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
}

// The group size of a launch that writes `out`: fn(std::integral_constant<int, G>{}).
template <typename Out, typename Fn>
auto with_group_size(const BlockLayout& b, const Out* out, Fn&& fn) {
  return can_vectorise(b, out) ? fn(std::integral_constant<int, kGroup<Out>>{})
                               : fn(std::integral_constant<int, 1>{});
}

// The G outputs of a group, written with one (vector) store.
template <typename T, int G>
struct alignas(G * sizeof(T) >= 16 ? 16 : alignof(T)) Pack {
  T v[G];
};

// Conversions between an element type and its compute type, rounding to nearest even as c10 does.
// Host runs take the c10 types, which convert so; CUDA's 16-bit types need their intrinsics.
template <typename T> KPFAST_HD math_t<T> to_math(T v) { return static_cast<math_t<T>>(v); }
template <typename T> KPFAST_HD T from_math(math_t<T> v) { return static_cast<T>(v); }
#if defined(__CUDACC__)
KPFAST_HD float to_math(__half v) { return __half2float(v); }
KPFAST_HD float to_math(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> KPFAST_HD __half from_math<__half>(float v) { return __float2half_rn(v); }
template <> KPFAST_HD __nv_bfloat16 from_math<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
#endif

// ---------------------------------------------------------------------------------------------
// The element code of block_lut: out = tables[table_rows[kL + l] + level(x[in_block + offsets[kL + l]])].

template <typename In, typename Out>
struct LutArgs {
  const In* x;
  BlockKeys keys;      // with the offsets and table rows of step 1
  const Out* tables;   // [T, V]
  int64_t table_size;  // T * V
  int32_t levels;      // V
  math_t<In> qscale;
  int32_t rounding;
  Out* out;
};

template <typename In, typename Out>
LutArgs<In, Out> lut_args(const BlockKeys& keys, const In* x, const Out* tables, int64_t T, int64_t V,
                          double qscale, int32_t rounding, Out* out) {
  return LutArgs<In, Out>{x, keys, tables, T * V, static_cast<int32_t>(V), static_cast<math_t<In>>(qscale),
                          rounding, out};
}

// The table level of an input value.
template <typename In>
KPFAST_HD int32_t level_of(In v, math_t<In> qscale, int32_t levels, int32_t rounding) {
  if constexpr (std::is_same_v<In, uint8_t>) {
    return v;  // uint8 images need V >= 256, checked by the wrappers
  } else {
    return quantize<math_t<In>>(to_math(v), qscale, levels, rounding);
  }
}

// `tables` is a.tables or a copy of it (the CUDA kernel stages small tables in shared memory).
template <typename In, typename Out, int G>
KPFAST_HD void lut_group(const Traversal& t, const LutArgs<In, Out>& a, const Out* tables, int64_t group) {
  GroupCursor at(t, a.keys, group);
  const int64_t* offsets = a.keys.offsets + at.kL;
  const int64_t* rows = a.keys.table_rows + at.kL;
  Pack<Out, G> v;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < G; ++j) {
    if (j > 0) at.next(t);
    const In value = ldg(a.x + at.in_block + ldg(offsets + at.l));
    v.v[j] = tables[ldg(rows + at.l) + level_of<In>(value, a.qscale, a.levels, a.rounding)];
  }
  *reinterpret_cast<Pack<Out, G>*>(a.out + group * G) = v;
}

// ---------------------------------------------------------------------------------------------
// The element code of block_affine: out = affine(x[in_block + offsets[kL + l]], coef[kL + l]).

template <typename T>
struct AffineArgs {
  const T* x;
  BlockKeys keys;         // with the offsets of step 1
  const math_t<T>* coef;  // [K * L][4]: scale, bias, sub, div
  T* out;
};

template <typename T, int G>
KPFAST_HD void affine_group(const Traversal& t, const AffineArgs<T>& a, int64_t group) {
  GroupCursor at(t, a.keys, group);
  const int64_t* offsets = a.keys.offsets + at.kL;
  const math_t<T>* coef = a.coef + at.kL * kNumAffineParams;
  Pack<T, G> v;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < G; ++j) {
    if (j > 0) at.next(t);
    const math_t<T> value = to_math(ldg(a.x + at.in_block + ldg(offsets + at.l)));
    const math_t<T>* c = coef + int64_t(at.l) * kNumAffineParams;
    v.v[j] = from_math<T>(affine(value, ldg(c + kScale), ldg(c + kBias), ldg(c + kSub), ldg(c + kDiv)));
  }
  *reinterpret_cast<Pack<T, G>*>(a.out + group * G) = v;
}

}  // namespace kpfast::kernels::detail
