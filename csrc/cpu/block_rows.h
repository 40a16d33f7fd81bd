// Row-by-row traversal shared by the CPU block kernels: outputs are written in memory order
// (NCHW or channels_last), inputs are gathered through their strides, rows run in parallel.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/block_index.h"
#include "op_checks.h"

namespace kpfast::cpu {

// The output tensor, in the input's memory format. A large fresh output costs more in page faults
// than the kernel costs in arithmetic; asking the kernel for transparent huge pages first (where
// THP is in "madvise" mode, as on common Linux setups) makes that 512 times fewer faults.
inline at::Tensor empty_output(const at::Tensor& x, at::ScalarType dtype, at::MemoryFormat fmt) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype), fmt);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + out.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint
#endif
  return out;
}

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

// Traverses the output in runs: run(out, out_step, in, in_step, count, key_position) stands for
//     for i < count: output[out + i * out_step] = f_{key_position}(input[in + i * in_step])
// where key_position = k * L + l indexes the per-key, per-position data of the kernel. A run is one
// block position along an output row, so the kernel reads its table or coefficients once per run
// and its inner loop is one load, one lookup and one store. Threads take contiguous ranges of
// output rows (memory order), so each writes (and page-faults) its own stretch of memory.
template <typename Run>
void for_each_run(const BlockGeometry& g, const at::Tensor& x, bool channels_last_out,
                  const std::vector<int64_t>& keys, const std::vector<int64_t>& rel, const Run& run) {
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, M = g.M, L = g.L;
  const int64_t sN = x.stride(0), sH = x.stride(2), sW = x.stride(3);
  // An output row: (n, y) of W * C elements for channels_last, (n, c, y) of W elements otherwise;
  // along it the block positions repeat with period P.
  const int64_t row_length = channels_last_out ? W * C : W;
  const int64_t rows = channels_last_out ? N * H : N * C * H;
  const int64_t period = channels_last_out ? M * C : M;
  const int64_t blocks = W / M;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_length));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y = row % H, ym = y % M;
      const int64_t n = channels_last_out ? row / H : row / (C * H);
      const int64_t c = channels_last_out ? 0 : (row / H) % C;
      const int64_t kL = keys[n] * L;
      const int64_t in_row = n * sN + (y - ym) * sH;  // first element of this row's block row
      for (int64_t j = 0; j < period; ++j) {
        // channels_last: j = xm * C + c', so l = ym * M * C + j; otherwise j = xm.
        const int64_t l = channels_last_out ? ym * M * C + j : block_position(ym, j, c, M, C);
        run(row * row_length + j, period, in_row + rel[kL + l], M * sW, blocks, kL + l);
      }
    }
  });
}

}  // namespace kpfast::cpu
