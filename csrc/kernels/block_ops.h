// Torch-free launchers of the CUDA block kernels (block_lut.cu, block_affine.cu), called by the
// torch-facing wrappers in csrc/cuda/. Device pointers and a cudaStream_t in, the launch's
// cudaError_t out; nothing here allocates or synchronises, so the ops can be graph-captured.
//
// Every launcher runs two kernels on `stream`:
//   1. a small one over the K * L (key, position) entries: the input offset of each source position
//      from its block's first element (kpfast::block_offset), where its table starts, range checks;
//   2. the element kernel: each thread takes groups of consecutive OUTPUT elements in output memory
//      order (coalesced, vectorised writes) and gathers their inputs through the offsets of step 1.
// Bad key values (src, table_id, key_index out of range) are clamped into range, so that no thread
// ever reads out of bounds, and stop the kernel with a device-side assert (see KPFAST_KERNEL_ASSERT).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "block_index.h"

// CUDA's 16-bit float types (cuda_fp16.h, cuda_bf16.h), only declared here: the wrappers pass
// at::Half / at::BFloat16 data reinterpreted as these (same bits) and never need those headers.
struct __half;
struct __nv_bfloat16;

namespace kpfast::kernels {

// An NCHW image batch and the memory order of the output (same sizes, freshly allocated).
struct BlockLayout {
  int64_t N, C, H, W, M;    // batch, channels, height, width, block size; L = M * M * C
  int64_t sN, sC, sH, sW;   // input strides in elements (any layout, views included)
  bool channels_last_out;   // output is channels_last, else NCHW-contiguous
};

// The key material of both ops.
struct BlockKeys {
  const int64_t* src;        // [K, L] contiguous: destination position l reads source position src[k, l]
  const int64_t* key_index;  // [N]: key set of each image, or nullptr (then K == 1)
  int64_t K;
  int64_t* offsets;          // scratch [K * L], filled by the launcher
};

// The compute type of a float image (at::opmath_type): float, and double for double.
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };
template <typename T> using math_t = typename MathType<T>::type;

// out[l] = tables[table_id[k, l], level(x[src[k, l]])]: level = x for uint8 input, else
// kpfast::quantize(x, qscale, V, rounding) in math_t<In>. In: uint8_t, float, double, __half,
// __nv_bfloat16; Out: float, double, __half, __nv_bfloat16. table_id is [K, L] contiguous,
// tables [T, V] contiguous (V >= 256 for uint8 input).
template <typename In, typename Out>
cudaError_t block_lut(const BlockLayout& layout, const BlockKeys& keys, const In* x,
                      const int64_t* table_id, int64_t* table_rows /* scratch [K * L] */,
                      const Out* tables, int64_t T, int64_t V, double qscale, int32_t rounding,
                      Out* out, cudaStream_t stream);

// out[l] = (scale * x[src[k, l]] + bias - sub) / div in math_t<T> (kpfast::affine). T: float,
// double, __half, __nv_bfloat16. coef is [K, L, 4] contiguous (scale, bias, sub, div), already
// converted to math_t<T>.
template <typename T>
cudaError_t block_affine(const BlockLayout& layout, const BlockKeys& keys, const T* x,
                         const math_t<T>* coef, T* out, cudaStream_t stream);

}  // namespace kpfast::kernels

// ---------------------------------------------------------------------------------------------
// Kernel-side pieces shared by the two .cu files (nvcc only, so the wrappers never see the CUDA
// math headers). __host__ __device__ where possible: the traversal can be run on a CPU-only machine.
#if defined(__CUDACC__)

#include <cassert>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kpfast::kernels::detail {

constexpr int kThreads = 256;  // threads per block

// A bad key value stops the kernel with a device-side assert: cudaErrorAssert, "device-side assert
// triggered", and the CUDA context is unusable afterwards, as after torch's own index asserts.
// Deliberately not compiled out by NDEBUG on the device; checking on the host would need a
// synchronisation. (Host runs of the device code use a plain assert.)
#if defined(__CUDA_ARCH__)
#define KPFAST_KERNEL_ASSERT(cond, msg)                                                   \
  do {                                                                                    \
    if (!(cond)) __assert_fail(msg, __FILE__, static_cast<unsigned>(__LINE__), __func__); \
  } while (0)
#else
#define KPFAST_KERNEL_ASSERT(cond, msg) assert((cond) && msg)
#endif

// Clamps an index into [0, size) and asserts that it already was.
#define KPFAST_CHECKED_INDEX(i, size, msg)      \
  do {                                          \
    const bool ok_ = (i) >= 0 && (i) < (size);  \
    if (!ok_) (i) = (i) < 0 ? 0 : (size) - 1;   \
    KPFAST_KERNEL_ASSERT(ok_, msg);             \
  } while (0)

// Read-only load (the non-coherent cache path on the GPU).
template <typename T>
KPFAST_HD T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

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
  int64_t block_step;    // input offset from one block of a row to the next: M * sW
  int32_t run, l_step;   // in-block quantities are 32-bit (the launchers check L < 2^31)
  Divider per_row, h, c, m, by_run;  // dividers by groups per row, H, C, M, run

  static Traversal make(const BlockLayout& b, int64_t G) {
    Traversal t;
    t.b = b;
    t.L = b.M * b.M * b.C;
    t.G = G;
    t.groups = b.N * b.C * b.H * b.W / G;
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
// of its block (the input element is at in_block + offsets[kL + l]).
struct GroupCursor {
  int64_t kL, in_block;
  int32_t l, p, l0;  // block position, index in the current block's run, position of a run's start

  KPFAST_HD GroupCursor(const Traversal& t, const int64_t* key_index, int64_t K, int64_t group) {
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
    const int64_t bx = t.by_run.div(first);
    int64_t k = 0;
    if (key_index != nullptr) {
      k = ldg(key_index + n);
      KPFAST_CHECKED_INDEX(k, K, "kpfast: key_index holds a key set outside [0, K)");
    }
    kL = k * t.L;
    in_block = n * b.sN + by * b.M * b.sH + bx * t.block_step;
    p = static_cast<int32_t>(first - bx * t.run);
    l0 = static_cast<int32_t>(block_position(ym, 0, c, b.M, b.C));
    l = l0 + p * t.l_step;
  }

  KPFAST_HD void next(const Traversal& t) {
    l += t.l_step;
    if (++p == t.run) {  // on to the next block of the row
      p = 0;
      l = l0;
      in_block += t.block_step;
    }
  }
};

// Step 1: offsets[i] = block_offset(src[i]) and, on the table path, table_rows[i] = table_id[i] * V
// (where the table starts), for the K * L (key, position) entries.
template <bool kTables>
__global__ void __launch_bounds__(kThreads)
    pack_keys_kernel(BlockLayout b, int64_t count, const int64_t* __restrict__ src,
                     int64_t* __restrict__ offsets, const int64_t* __restrict__ table_id, int64_t T,
                     int64_t V, int64_t* __restrict__ table_rows) {
  const int64_t L = b.M * b.M * b.C;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    int64_t s = src[i];
    KPFAST_CHECKED_INDEX(s, L, "kpfast: src holds a block position outside [0, L)");
    offsets[i] = block_offset(s, b.M, b.C, b.sC, b.sH, b.sW);
    if constexpr (kTables) {
      int64_t id = table_id[i];
      KPFAST_CHECKED_INDEX(id, T, "kpfast: table_id holds a table outside [0, T)");
      table_rows[i] = id * V;
    }
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

// Runs step 1 (table_id, T, V and table_rows only on the table path).
template <bool kTables>
cudaError_t pack_keys(const BlockLayout& b, const BlockKeys& keys, const int64_t* table_id, int64_t T,
                      int64_t V, int64_t* table_rows, cudaStream_t stream) {
  const int64_t L = b.M * b.M * b.C;
  if (L > INT32_MAX) return cudaErrorInvalidValue;  // in-block positions are 32-bit
  int blocks = 0;
  const cudaError_t err = grid_size(pack_keys_kernel<kTables>, 0, keys.K * L, blocks);
  if (err != cudaSuccess) return err;
  pack_keys_kernel<kTables><<<blocks, kThreads, 0, stream>>>(b, keys.K * L, keys.src, keys.offsets,
                                                             table_id, T, V, table_rows);
  return cudaGetLastError();
}

// Outputs per group: 32 bytes, i.e. two 16-byte stores per thread and loop iteration, when every
// output row holds whole groups and `out` is 16-byte aligned; otherwise one output per group.
template <typename Out>
constexpr int kGroup = 32 / sizeof(Out);

template <typename Out>
bool can_vectorise(const BlockLayout& b, const Out* out) {
  const int64_t row = b.channels_last_out ? b.W * b.C : b.W;
  return row % kGroup<Out> == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
}

// The G outputs of a group, written with one (vector) store.
template <typename T, int G>
struct alignas(G * sizeof(T) >= 16 ? 16 : alignof(T)) Pack {
  T v[G];
};

// Conversions between an element type and its compute type (round to nearest even, as c10).
KPFAST_HD float to_math(float v) { return v; }
KPFAST_HD double to_math(double v) { return v; }
KPFAST_HD float to_math(__half v) { return __half2float(v); }
KPFAST_HD float to_math(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> KPFAST_HD T from_math(math_t<T> v) { return v; }
template <> KPFAST_HD __half from_math<__half>(float v) { return __float2half_rn(v); }
template <> KPFAST_HD __nv_bfloat16 from_math<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace kpfast::kernels::detail

#endif  // __CUDACC__
