// Row-by-row traversal shared by the CPU block kernels: outputs are written in memory order
// (NCHW or channels_last), inputs are gathered through their strides, rows run in parallel.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <vector>

#include "kernels/block_index.h"
#include "op_checks.h"

namespace kpfast::cpu {

// Input offset of every (key, destination position) relative to its block's first element.
inline std::vector<int64_t> source_offsets(const at::Tensor& src, const BlockGeometry& g,
                                           const at::Tensor& x) {
  const at::Tensor s = src.contiguous();
  const int64_t* p = s.const_data_ptr<int64_t>();
  std::vector<int64_t> rel(g.K * g.L);
  for (int64_t i = 0; i < g.K * g.L; ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < g.L, "src must hold block positions in [0, ", g.L, "), found ", p[i]);
    rel[i] = block_offset(p[i], g.M, g.C, x.stride(1), x.stride(2), x.stride(3));
  }
  return rel;
}

// Key set of every image (all zero without key_index), checked against K.
inline std::vector<int64_t> image_keys(const std::optional<at::Tensor>& key_index,
                                       const BlockGeometry& g) {
  std::vector<int64_t> keys(g.N, 0);
  if (!key_index.has_value()) return keys;
  const at::Tensor k = key_index->contiguous();
  const int64_t* p = k.const_data_ptr<int64_t>();
  for (int64_t n = 0; n < g.N; ++n) {
    TORCH_CHECK(p[n] >= 0 && p[n] < g.K, "key_index[", n, "] = ", p[n], " is out of range for ", g.K,
                " key sets");
    keys[n] = p[n];
  }
  return keys;
}

// Calls fn(out_offset, in_offset, key_position) for every output element, where key_position =
// k * L + l indexes the per-key, per-position data of the kernel. Threads take contiguous ranges
// of output rows (in memory order), so each writes (and page-faults) its own stretch of memory.
template <typename Fn>
void for_each_element(const BlockGeometry& g, const at::Tensor& x, bool channels_last_out,
                      const std::vector<int64_t>& keys, const std::vector<int64_t>& rel, const Fn& fn) {
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, M = g.M, L = g.L;
  const int64_t sN = x.stride(0), sH = x.stride(2), sW = x.stride(3);
  // An output row: (n, y) of W * C elements for channels_last, (n, c, y) of W elements otherwise.
  const int64_t row_length = channels_last_out ? W * C : W;
  const int64_t rows = channels_last_out ? N * H : N * C * H;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_length));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y = row % H, ym = y % M;
      const int64_t n = channels_last_out ? row / H : row / (C * H);
      const int64_t kL = keys[n] * L;
      const int64_t* rel_k = rel.data() + kL;
      const int64_t in_row = n * sN + (y - ym) * sH;  // first row of this block row
      int64_t o = row * row_length;
      if (channels_last_out) {
        // One block contributes M * C consecutive outputs whose positions are consecutive too.
        const int64_t l0 = ym * M * C;
        for (int64_t bx = 0; bx < W / M; ++bx) {
          const int64_t in_block = in_row + bx * M * sW;
          for (int64_t j = 0; j < M * C; ++j) fn(o++, in_block + rel_k[l0 + j], kL + l0 + j);
        }
      } else {
        const int64_t c = (row / H) % C;
        for (int64_t bx = 0; bx < W / M; ++bx) {
          const int64_t in_block = in_row + bx * M * sW;
          for (int64_t xm = 0; xm < M; ++xm) {
            const int64_t l = block_position(ym, xm, c, M, C);
            fn(o++, in_block + rel_k[l], kL + l);
          }
        }
      }
    }
  });
}

}  // namespace kpfast::cpu
