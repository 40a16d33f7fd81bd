// Input checks shared by the CPU and CUDA wrappers of the block ops: every bad input gets an
// error that names the problem, before any kernel reads memory. kpfast/ops.py mirrors them in the
// fake kernels (same order, same messages), so torch.compile refuses what the ops refuse. Key
// values (src, table_id, key_index, block_src entries) are checked where they are read: by the CPU
// op (cpu/block_rows.h), by device asserts on CUDA. Where an out= buffer lies in memory is checked
// here only (a traced graph has no addresses).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "kernels/block_index.h"

namespace kpfast {

struct BlockGeometry {
  int64_t N, C, H, W, M, L, K;
};

// The float dtypes the kernels compute in (others, float8 included, get an error, not a dispatch failure).
inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
constexpr const char* kKernelFloats = "float32, float64, float16 or bfloat16";

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                              const char* fix = "move the key to the images' device") {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
              " but the images are on ", x.device(), "; ", fix);
}

inline BlockGeometry check_block_input(const char* op, const at::Tensor& x, int64_t block_size,
                                       const at::Tensor& src) {
  TORCH_CHECK(x.dim() == 4, op, ": expected an NCHW image batch (4 dims), got ", x.dim(),
              " dims with shape ", x.sizes());
  TORCH_CHECK(block_size >= 1, op, ": block_size must be >= 1, got ", block_size);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = block_size;
  TORCH_CHECK(C >= 1, op, ": the image batch has no channels");
  TORCH_CHECK(H % M == 0 && W % M == 0, op, ": image height and width (", H, ", ", W,
              ") must be divisible by the block size ", M);
  int64_t L = 0;
  const bool overflow = c10::mul_overflows(M, M, &L) || c10::mul_overflows(L, C, &L);
  TORCH_CHECK(!overflow && L <= kMaxBlockPositions, op, ": block_size ", M, " is too large: a ", M, "x", M,
              "x", C, " block has more than ", kMaxBlockPositions, " positions");
  TORCH_CHECK(src.dim() == 2 && src.size(1) == L, op, ": src must have shape [K, ", L,
              "] (block positions of a ", M, "x", M, "x", C, " block), got ", src.sizes(),
              "; was the key made for another block size or channel count?");
  TORCH_CHECK(src.scalar_type() == at::kLong, op, ": src must be int64, got ", src.scalar_type());
  TORCH_CHECK(src.size(0) >= 1, op, ": src holds no key (K = 0)");
  check_same_device(op, "src", src, x);
  return BlockGeometry{N, C, H, W, M, L, src.size(0)};
}

inline void check_key_index(const char* op, const std::optional<at::Tensor>& key_index,
                            const BlockGeometry& g, const at::Tensor& x) {
  if (!key_index.has_value()) {
    TORCH_CHECK(g.K == 1, op, ": ", g.K, " key sets given but no key_index saying which image uses which");
    return;
  }
  const at::Tensor& k = *key_index;
  TORCH_CHECK(k.dim() == 1 && k.size(0) == g.N, op, ": key_index must have shape [", g.N,
              "] (one key per image), got ", k.sizes());
  TORCH_CHECK(k.scalar_type() == at::kLong, op, ": key_index must be int64, got ", k.scalar_type());
  check_same_device(op, "key_index", k, x);
}

// Block scrambling: one source block for each of the B = (H / M) * (W / M) blocks, per key set.
inline void check_block_src(const char* op, const std::optional<at::Tensor>& block_src, const BlockGeometry& g,
                            const at::Tensor& x) {
  if (!block_src.has_value()) return;
  const at::Tensor& b = *block_src;
  const int64_t rows = g.H / g.M, cols = g.W / g.M;
  TORCH_CHECK(b.dim() == 2 && b.size(1) == rows * cols, op, ": block_src must have shape [K, ", rows * cols,
              "] (the ", rows, "x", cols, " blocks of ", g.H, "x", g.W, " images in ", g.M, "x", g.M,
              " blocks), got ", b.sizes(), "; was the key made for another image size?");
  TORCH_CHECK(b.size(0) == g.K, op, ": block_src must have one row per key set (", g.K, "), got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == at::kLong, op, ": block_src must be int64, got ", b.scalar_type());
  check_same_device(op, "block_src", b, x);
}

inline void check_lut_tables(const char* op, const at::Tensor& x, const BlockGeometry& g,
                             const at::Tensor& table_id, const at::Tensor& tables) {
  TORCH_CHECK(x.scalar_type() == at::kByte || is_kernel_float(x.scalar_type()), op,
              ": images must be uint8 or floating point (", kKernelFloats, "), got ", x.scalar_type());
  TORCH_CHECK(table_id.sizes() == at::IntArrayRef({g.K, g.L}), op, ": table_id must have shape [", g.K,
              ", ", g.L, "], got ", table_id.sizes());
  TORCH_CHECK(table_id.scalar_type() == at::kLong, op, ": table_id must be int64, got ",
              table_id.scalar_type());
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) >= 1, op, ": tables must have shape [T, V] with T >= 1, got ",
              tables.sizes());
  TORCH_CHECK(is_kernel_float(tables.scalar_type()), op, ": tables must be floating point (", kKernelFloats,
              "), got ", tables.scalar_type());
  const int64_t V = tables.size(1);
  TORCH_CHECK(x.scalar_type() != at::kByte || V >= 256, op, ": uint8 images need 256-entry tables, got ", V);
  TORCH_CHECK(V >= 1, op, ": tables have no entries (V = 0); float images need V >= 1 levels");
  TORCH_CHECK(V <= kMaxLevels, op, ": tables too wide (", V, " entries, at most ", kMaxLevels, ")");
  check_same_device(op, "table_id", table_id, x);
  check_same_device(op, "tables", tables, x);
}

// The quantisation of float images: qscale levels per unit (representable in float, the compute
// type of all but float64 images) and the rounding mode.
inline int32_t check_quantisation(const char* op, double qscale, c10::string_view rounding) {
  TORCH_CHECK(std::isfinite(qscale) && qscale > 0 && qscale <= std::numeric_limits<float>::max(), op,
              ": qscale must be a positive finite number (at most ", std::numeric_limits<float>::max(),
              "), got ", qscale);
  if (rounding == "floor") return kRoundFloor;
  TORCH_CHECK(rounding == "nearest", op, ": rounding must be \"floor\" or \"nearest\", got \"",
              std::string(rounding), "\"");
  return kRoundNearest;
}

inline void check_affine_params(const char* op, const at::Tensor& x, const BlockGeometry& g,
                                const at::Tensor& params) {
  TORCH_CHECK(is_kernel_float(x.scalar_type()), op, ": the affine path needs floating point images (",
              kKernelFloats, "), got ", x.scalar_type(), " (uint8 images take the table path)");
  TORCH_CHECK(params.sizes() == at::IntArrayRef({g.K, kNumAffineParams, g.L}), op,
              ": params must have shape [", g.K, ", ", int(kNumAffineParams), ", ", g.L, "], got ",
              params.sizes());
  TORCH_CHECK(params.scalar_type() == at::kDouble, op, ": params must be float64, got ",
              params.scalar_type());
  check_same_device(op, "params", params, x);
}

// An argument of an op, by name (nullptr: an optional argument not given).
struct NamedTensor {
  const char* name;
  const at::Tensor* tensor;
};
inline const at::Tensor* given(const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

// Whether no two elements of t share a memory location, from its strides alone: sorted by stride,
// every dimension must step past all that the smaller ones span (which refuses expanded views, and
// also the rare interleaved layouts that would pass a finer test).
inline bool elements_are_distinct(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dimensions of size > 1
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t span = 0;  // the largest offset the dimensions so far reach
  for (const auto& [stride, size] : dims) {
    if (stride <= span) return false;
    span += stride * (size - 1);
  }
  return true;
}

// Whether the memory a and b can touch intersects (each from its first to its last element).
inline bool share_memory(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto bytes = [](const at::Tensor& t) {
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const auto first = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    return std::pair<uintptr_t, uintptr_t>(first, first + uintptr_t(last + 1) * t.itemsize());
  };
  const auto [a0, a1] = bytes(a);
  const auto [b0, b1] = bytes(b);
  return a0 < b1 && b0 < a1;
}

// An out= buffer: the output's shape and dtype, on the images' device, one memory location per
// element (the shape checks, mirrored by the fake kernels), and no memory shared with the op's
// arguments, which the kernels read while they write (the eager op alone).
inline void check_out(const char* op, const at::Tensor& out, const at::Tensor& x, at::ScalarType dtype) {
  TORCH_CHECK(out.sizes() == x.sizes(), op, ": out must have the images' shape ", x.sizes(), ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == dtype, op, ": out must be ", dtype, " (the output dtype), got ", out.scalar_type());
  check_same_device(op, "out", out, x, "give an out buffer on the images' device");
  TORCH_CHECK(elements_are_distinct(out), op, ": out has elements that share memory (strides ", out.strides(),
              "); give a buffer with one memory location per element");
}

inline void check_out_memory(const char* op, const at::Tensor& out, std::initializer_list<NamedTensor> args) {
  for (const NamedTensor& a : args)
    TORCH_CHECK(a.tensor == nullptr || !share_memory(out, *a.tensor), op, ": out shares memory with ", a.name,
                ", which the op reads while it writes out; give a separate buffer");
}

}  // namespace kpfast
