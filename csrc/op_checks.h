// Input checks shared by the CPU and CUDA wrappers of the block ops: every bad input gets an
// error that names the problem, before any kernel reads memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>

#include "kernels/block_index.h"

namespace kpfast {

struct BlockGeometry {
  int64_t N, C, H, W, M, L, K;
};

inline BlockGeometry check_block_input(const char* op, const at::Tensor& x, int64_t block_size,
                                       const at::Tensor& src) {
  TORCH_CHECK(x.dim() == 4, op, ": expected an NCHW image batch (4 dims), got ", x.dim(),
              " dims with shape ", x.sizes());
  TORCH_CHECK(block_size >= 1, op, ": block_size must be >= 1, got ", block_size);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = block_size;
  TORCH_CHECK(C >= 1, op, ": the image batch has no channels");
  TORCH_CHECK(H % M == 0 && W % M == 0, op, ": image height and width (", H, ", ", W,
              ") must be divisible by the block size ", M);
  const int64_t L = M * M * C;
  TORCH_CHECK(src.dim() == 2 && src.size(1) == L, op, ": src must have shape [K, ", L,
              "] (block positions of a ", M, "x", M, "x", C, " block), got ", src.sizes(),
              "; was the key made for another block size or channel count?");
  TORCH_CHECK(src.scalar_type() == at::kLong, op, ": src must be int64, got ", src.scalar_type());
  TORCH_CHECK(src.size(0) >= 1, op, ": src holds no key (K = 0)");
  TORCH_CHECK(src.device() == x.device(), op, ": src is on ", src.device(), " but the images are on ",
              x.device(), "; move the key to the images' device");
  return BlockGeometry{N, C, H, W, M, L, src.size(0)};
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
              " but the images are on ", x.device(), "; move the key to the images' device");
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

inline int32_t parse_rounding(const char* op, c10::string_view rounding) {
  if (rounding == "floor") return kRoundFloor;
  if (rounding == "nearest") return kRoundNearest;
  TORCH_CHECK(false, op, ": rounding must be \"floor\" or \"nearest\", got \"", std::string(rounding), "\"");
  return kRoundFloor;  // unreachable
}

inline void check_lut_tables(const char* op, const at::Tensor& x, const BlockGeometry& g,
                             const at::Tensor& table_id, const at::Tensor& tables) {
  TORCH_CHECK(x.scalar_type() == at::kByte || at::isFloatingType(x.scalar_type()), op,
              ": images must be uint8 or floating point, got ", x.scalar_type());
  TORCH_CHECK(table_id.sizes() == at::IntArrayRef({g.K, g.L}), op, ": table_id must have shape [", g.K,
              ", ", g.L, "], got ", table_id.sizes());
  TORCH_CHECK(table_id.scalar_type() == at::kLong, op, ": table_id must be int64, got ",
              table_id.scalar_type());
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) >= 1, op, ": tables must have shape [T, V], got ",
              tables.sizes());
  TORCH_CHECK(at::isFloatingType(tables.scalar_type()), op, ": tables must be floating point, got ",
              tables.scalar_type());
  TORCH_CHECK(x.scalar_type() != at::kByte || tables.size(1) >= 256, op,
              ": uint8 images need 256-entry tables, got ", tables.size(1));
  TORCH_CHECK(tables.size(1) <= (int64_t(1) << 24), op, ": tables too wide (", tables.size(1), ")");
  check_same_device(op, "table_id", table_id, x);
  check_same_device(op, "tables", tables, x);
}

inline void check_affine_params(const char* op, const at::Tensor& x, const BlockGeometry& g,
                                const at::Tensor& params) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": the affine path needs floating point images, got ", x.scalar_type(),
              " (uint8 images take the table path)");
  TORCH_CHECK(params.sizes() == at::IntArrayRef({g.K, kNumAffineParams, g.L}), op,
              ": params must have shape [", g.K, ", ", int(kNumAffineParams), ", ", g.L, "], got ",
              params.sizes());
  TORCH_CHECK(params.scalar_type() == at::kDouble, op, ": params must be float64, got ",
              params.scalar_type());
  check_same_device(op, "params", params, x);
}

// All checks of one op, in the order of its schema: the CPU and CUDA wrappers start with these.
inline BlockGeometry check_block_lut(const at::Tensor& x, const at::Tensor& src, const at::Tensor& table_id,
                                     const at::Tensor& tables, int64_t block_size,
                                     const std::optional<at::Tensor>& key_index) {
  const char* op = "kpfast.block_lut";
  const BlockGeometry g = check_block_input(op, x, block_size, src);
  check_lut_tables(op, x, g, table_id, tables);
  check_key_index(op, key_index, g, x);
  return g;
}

inline BlockGeometry check_block_affine(const at::Tensor& x, const at::Tensor& src, const at::Tensor& params,
                                        int64_t block_size, const std::optional<at::Tensor>& key_index) {
  const char* op = "kpfast.block_affine";
  const BlockGeometry g = check_block_input(op, x, block_size, src);
  check_affine_params(op, x, g, params);
  check_key_index(op, key_index, g, x);
  return g;
}

// Outputs keep the input's memory format (channels_last stays channels_last).
inline at::MemoryFormat output_format(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous;
}

}  // namespace kpfast
