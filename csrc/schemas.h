// The schemas of the `kpfast` ops, registered by registration.cpp (and taken over unchanged by the
// host runs of the CUDA kernels' code, csrc/testing/).
//
// Key material reaches the ops as plain tensors (built by kpfast/plan.py from a KeySet):
//   src       int64 [K, L]   destination position l reads source position src[k, l] (any values in
//                            [0, L); a permutation for a shuffle, whose backward is then one gather)
//   table_id  int64 [K, L]   which row of `tables` maps the value at position l
//   tables    [T, V]         V-entry value tables (V >= 1; V >= 256 for uint8 images); their dtype
//                            is the output dtype
//   params    float64 [K, 4, L]  (scale, bias, sub, div) of the affine path
//   key_index int64 [N] or None: key set k used for image n (None: K must be 1), so that many
//             keys can be applied in one launch (key search attacks).
// L = M * M * C is at most 2^31 - 1; images and tables are float32, float64, float16 or bfloat16
// (images also uint8 on the table path). op_checks.h refuses anything else with a clear error.
#pragma once

namespace kpfast {

// out[l] = tables[table_id[l], level(x[src[l]])]; level = x for uint8 input, else
// quantize(x, qscale, V, rounding) with qscale > 0 finite and rounding "floor" or "nearest".
constexpr const char* kBlockLutSchema =
    "block_lut(Tensor x, Tensor src, Tensor table_id, Tensor tables, int block_size, float qscale, "
    "str rounding, Tensor? key_index) -> Tensor";

// out[l] = (scale[l] * x[src[l]] + bias[l] - sub[l]) / div[l], in the input's float dtype.
constexpr const char* kBlockAffineSchema =
    "block_affine(Tensor x, Tensor src, Tensor params, int block_size, Tensor? key_index) -> Tensor";

}  // namespace kpfast
