// What both CPU block kernels share: step 1 of a launch (the per-key data, kernels::pack_key) as a
// checked loop, and the row-by-row traversal of step 2: outputs are written in memory order (NCHW
// or channels_last), inputs are gathered through their strides, rows run in parallel.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "kernels/block_groups.h"
#include "op_args.h"

namespace kpfast::cpu {

// Packs the per-key data of all K * L entries of `call`, checking every key value on the way: a
// src, table_id or key_index value out of range is a clear error (where CUDA has device asserts).
template <bool kTables>
void pack_keys(const char* op, const OpCall& call, const int64_t* table_id = nullptr, int64_t T = 0,
               int64_t V = 0) {
  const kernels::BlockKeys& keys = call.keys;
  const int64_t L = call.g.L;
  for (int64_t i = 0; i < keys.K * L; ++i) {
    const int32_t faults = kernels::detail::pack_key<kTables>(call.layout, keys, table_id, T, V, i);
    TORCH_CHECK(!(faults & kernels::detail::kBadSource), op, ": src must hold block positions in [0, ", L,
                "), found ", keys.src[i]);
    TORCH_CHECK(!(faults & kernels::detail::kBadTable), op, ": table_id must be in [0, ", T, "), found ",
                table_id[i]);
  }
  for (int64_t n = 0; keys.key_index != nullptr && n < call.g.N; ++n)
    TORCH_CHECK(keys.key_index[n] >= 0 && keys.key_index[n] < keys.K, op, ": key_index[", n, "] = ",
                keys.key_index[n], " is out of range for ", keys.K, " key sets");
}

// Traverses the output in runs: run(out, out_step, in, in_step, count, key_position) stands for
//     for i < count: output[out + i * out_step] = f_{key_position}(input[in + i * in_step])
// where key_position = k * L + l indexes the per-key, per-position data of the kernel. A run is one
// block position along an output row, so the kernel reads its table or coefficients once per run
// and its inner loop is one load, one lookup and one store. Threads take contiguous ranges of
// output rows (memory order), so each writes (and page-faults) its own stretch of memory.
template <typename Run>
void for_each_run(const kernels::BlockLayout& b, const kernels::BlockKeys& keys, const Run& run) {
  const int64_t N = b.N, C = b.C, H = b.H, W = b.W, M = b.M, L = M * M * C;
  const bool cl = b.channels_last_out;
  // An output row: (n, y) of W * C elements for channels_last, (n, c, y) of W elements otherwise;
  // along it the block positions repeat with period P.
  const int64_t row_length = cl ? W * C : W;
  const int64_t rows = cl ? N * H : N * C * H;
  const int64_t period = cl ? M * C : M;
  const int64_t blocks = W / M;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_length));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y = row % H, ym = y % M;
      const int64_t n = cl ? row / H : row / (C * H);
      const int64_t c = cl ? 0 : (row / H) % C;
      const int64_t kL = (keys.key_index != nullptr ? keys.key_index[n] : 0) * L;
      const int64_t in_row = n * b.sN + (y - ym) * b.sH;  // first element of this row's block row
      for (int64_t j = 0; j < period; ++j) {
        // channels_last: j = xm * C + c', so l = ym * M * C + j; otherwise j = xm.
        const int64_t l = cl ? ym * M * C + j : block_position(ym, j, c, M, C);
        run(row * row_length + j, period, in_row + keys.offsets[kL + l], M * b.sW, blocks, kL + l);
      }
    }
  });
}

}  // namespace kpfast::cpu
