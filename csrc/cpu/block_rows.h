// What both CPU block kernels share: step 1 of a launch (the per-key data, kernels::pack_key and
// pack_block) as a checked loop, and the row-by-row traversal of step 2: outputs are written in
// memory order (NCHW or channels_last), inputs are gathered through their strides, rows run in
// parallel.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/block_groups.h"
#include "op_args.h"

namespace kpfast::cpu {

// Packs the per-key data of all K * L (and K * B) entries of `call`, checking every key value on
// the way: a src, table_id, block_src or key_index value out of range is a clear error (where CUDA
// has device asserts).
template <bool kTables>
void pack_keys(const char* op, const OpCall& call, const int64_t* table_id = nullptr, int64_t T = 0,
               int64_t V = 0) {
  namespace detail = kernels::detail;
  const kernels::BlockKeys& keys = call.keys;
  const int64_t L = call.g.L;
  for (int64_t i = 0; i < keys.K * L; ++i) {
    const int32_t faults = detail::pack_key<kTables>(call.layout, keys, table_id, T, V, i);
    TORCH_CHECK(!(faults & detail::kBadSource), op, ": src must hold block positions in [0, ", L, "), found ",
                keys.src[i]);
    TORCH_CHECK(!(faults & detail::kBadTable), op, ": table_id must be in [0, ", T, "), found ", table_id[i]);
  }
  const int64_t B = detail::blocks_per_image(call.layout);
  for (int64_t i = 0; keys.block_src != nullptr && i < keys.K * B; ++i)
    TORCH_CHECK(detail::pack_block(call.layout, keys, i) == detail::kKeyOk, op,
                ": block_src must hold block numbers in [0, ", B, "), found ", keys.block_src[i]);
  for (int64_t n = 0; keys.key_index != nullptr && n < call.g.N; ++n)
    TORCH_CHECK(keys.key_index[n] >= 0 && keys.key_index[n] < keys.K, op, ": key_index[", n, "] = ",
                keys.key_index[n], " is out of range for ", keys.K, " key sets");
}

// Where the input of the i-th block along a row is, for one block position: evenly spaced blocks
// (no block scrambling), or the listed source blocks of a scrambled row of blocks.
struct EvenBlocks {
  int64_t first, step;
  int64_t operator[](int64_t i) const { return first + i * step; }
};
struct ListedBlocks {
  const int64_t* blocks;  // source block offsets from the image's first element
  int64_t add;            // the image's first element plus the position's offset in its block
  int64_t operator[](int64_t i) const { return add + blocks[i]; }
};

// One run: o[i * o_step] = f(in[in_at[i]]) for i < count. The inner loop is all a kernel costs, so
// it is unrolled, and where input and output step alike (both NCHW-contiguous, or both
// channels_last, without scrambling) one index serves both.
template <typename In, typename Out, typename Blocks, typename Map>
inline void run_blocks(const In* in, const Blocks& in_at, Out* o, int64_t o_step, int64_t count, const Map& f) {
  if constexpr (std::is_same_v<Blocks, EvenBlocks>) {
    if (in_at.step == o_step) {
      const In* i0 = in + in_at.first;
      const int64_t end = count * o_step;
#pragma GCC unroll 4
      for (int64_t r = 0; r < end; r += o_step) o[r] = f(i0[r]);
      return;
    }
  }
#pragma GCC unroll 4
  for (int64_t i = 0; i < count; ++i) o[i * o_step] = f(in[in_at[i]]);
}

// One output row of NCHW output without block scrambling, from input whose rows are contiguous
// (sW == 1), for a block size kM known at compile time: left to right, o[x + xm] =
// f[xm](at[xm][x]) for x = 0, kM, 2 kM, ... < W. The kM maps and input pointers of the row's
// in-block row stay in registers, and the output is written in one contiguous stream (the strided
// runs of run_blocks write each cache line in kM passes). Measured with out=, uint8 -> float32,
// one thread: 1.2x faster on the ImageNet batch and 1.6x on the CIFAR-10 batch of
// benchmarks/out_table.py (benchmarks/results/out-and-pipeline.md).
template <int kM, typename In, typename Out, typename Map>
inline void run_row(const std::array<const In*, kM>& at, const std::array<Map, kM>& f, Out* o, int64_t W) {
  for (int64_t x = 0; x < W; x += kM) {
#pragma GCC unroll 16
    for (int xm = 0; xm < kM; ++xm) o[x + xm] = f[xm](at[xm][x]);
  }
}

// The maps of the kM positions (ym, xm, c) of one in-block row, xm = 0 .. kM - 1.
template <int kM, typename MakeMap, size_t... kXm>
inline auto row_maps(const MakeMap& map, int64_t kL, int64_t ym, int64_t c, int64_t C,
                     std::index_sequence<kXm...>) {
  return std::array<decltype(map(int64_t(0))), kM>{map(kL + block_position(ym, kXm, c, kM, C))...};
}

// Step 2 of a launch on the CPU: out[e] = map_{k * L + l}(in[source of e]) for every output element
// e, where map(kl) gives the value map of key position kl = k * L + l (its table or coefficients).
//
// The output is cut into bands of consecutive rows of blocks of one output plane (an image's
// channel for NCHW output, the image for channels_last), plane after plane in memory order: each
// thread writes (and page-faults) its own stretch of memory, in one sequential stream. Where the
// output is NCHW, blocks are not scrambled, input rows are contiguous and the block size is one
// of kRowBlockSizes, each output row is written left to right (run_row). Otherwise, within a
// band, runs go along the output rows of one in-block row ym and one block position: the run's
// map is made once per band, and its inner loop is one load, one map and one store (run_blocks).
// Measured on 224x224 and 32x32 batches (benchmarks/test_bench_out.py): a band of one row of
// blocks is fastest where a row of blocks is large, and a band of up to kBandBytes of output
// amortises the runs' setup on small images (a larger band is slower).
constexpr int64_t kBandBytes = 4096;

template <int kM, typename In, typename Out, typename MakeMap>
void band_by_rows(const kernels::BlockLayout& b, const kernels::BlockKeys& keys, const In* in, Out* o_plane,
                  int64_t kL, int64_t in_image, int64_t c, int64_t by0, int64_t by1, const MakeMap& map) {
  const int64_t W = b.W;
  for (int64_t ym = 0; ym < kM; ++ym) {
    const auto f = row_maps<kM>(map, kL, ym, c, b.C, std::make_index_sequence<kM>());
    std::array<int64_t, kM> offset;
    for (int xm = 0; xm < kM; ++xm) offset[xm] = keys.offsets[kL + block_position(ym, xm, c, kM, b.C)];
    for (int64_t by = by0; by < by1; ++by) {
      std::array<const In*, kM> at;
      for (int xm = 0; xm < kM; ++xm) at[xm] = in + in_image + by * kM * b.sH + offset[xm];
      run_row<kM>(at, f, o_plane + (by * kM + ym) * W, W);
    }
  }
}

template <typename In, typename Out, typename MakeMap>
void for_each_run(const kernels::BlockLayout& b, const kernels::BlockKeys& keys, const In* in, Out* out,
                  const MakeMap& map) {
  const int64_t N = b.N, C = b.C, H = b.H, W = b.W, M = b.M, L = M * M * C;
  const bool cl = b.channels_last_out;
  // An output row: (n, y) of W * C elements for channels_last, (n, c, y) of W elements otherwise;
  // along it the block positions repeat with period P.
  const int64_t row_length = cl ? W * C : W;
  const int64_t planes = cl ? N : N * C;
  const int64_t period = cl ? M * C : M;
  const int64_t bw = W / M, bh = H / M, B = bh * bw;
  const int64_t band = std::clamp<int64_t>(kBandBytes / (M * row_length * int64_t(sizeof(Out))), 1, bh);
  const int64_t bands = (bh + band - 1) / band;  // per plane
  const bool by_rows = !cl && keys.block_offsets == nullptr && b.sW == 1;
  at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t plane = unit / bands, by0 = (unit % bands) * band, by1 = std::min(by0 + band, bh);
      const int64_t n = cl ? plane : plane / C, c = cl ? 0 : plane % C;
      const int64_t k = keys.key_index != nullptr ? keys.key_index[n] : 0;
      const int64_t kL = k * L, in_image = n * b.sN;
      Out* o_plane = out + plane * H * row_length;
      if (by_rows) {
        switch (M) {
          case 1: band_by_rows<1>(b, keys, in, o_plane, kL, in_image, c, by0, by1, map); continue;
          case 2: band_by_rows<2>(b, keys, in, o_plane, kL, in_image, c, by0, by1, map); continue;
          case 4: band_by_rows<4>(b, keys, in, o_plane, kL, in_image, c, by0, by1, map); continue;
          case 8: band_by_rows<8>(b, keys, in, o_plane, kL, in_image, c, by0, by1, map); continue;
          default: break;
        }
      }
      // Scrambled: the source blocks of each row of blocks, B per key.
      const int64_t* listed = keys.block_offsets != nullptr ? keys.block_offsets + k * B : nullptr;
      for (int64_t ym = 0; ym < M; ++ym) {
        for (int64_t j = 0; j < period; ++j) {
          // channels_last: j = xm * C + c', so l = ym * M * C + j; otherwise j = xm.
          const int64_t l = cl ? ym * M * C + j : block_position(ym, j, c, M, C);
          const int64_t offset = keys.offsets[kL + l];
          const auto f = map(kL + l);
          for (int64_t by = by0; by < by1; ++by) {
            Out* o = o_plane + (by * M + ym) * row_length + j;
            if (listed != nullptr) {
              run_blocks(in, ListedBlocks{listed + by * bw, in_image + offset}, o, period, bw, f);
            } else {
              run_blocks(in, EvenBlocks{in_image + by * M * b.sH + offset, M * b.sW}, o, period, bw, f);
            }
          }
        }
      }
    }
  });
}

}  // namespace kpfast::cpu
