// The one TORCH_LIBRARY block of the `kpfast` namespace: every op schema lives here.
//
// Key material reaches the ops as plain tensors (built by kpfast/plan.py from a KeySet):
//   src       int64 [K, L]   destination position l reads source position src[k, l]
//   table_id  int64 [K, L]   which row of `tables` maps the value at position l
//   tables    [T, V]         V-entry value tables; their dtype is the output dtype
//   params    float64 [K, 4, L]  (scale, bias, sub, div) of the affine path
//   key_index int64 [N] or None: key set k used for image n (None: K must be 1), so that many
//             keys can be applied in one launch (key search attacks).
#include <torch/library.h>

TORCH_LIBRARY(kpfast, m) {
  m.set_python_module("kpfast.ops");
  // out[l] = tables[table_id[l], level(x[src[l]])]; level = x for uint8 input, else
  // quantize(x, qscale, V, rounding) with rounding "floor" or "nearest".
  m.def(
      "block_lut(Tensor x, Tensor src, Tensor table_id, Tensor tables, int block_size, "
      "float qscale, str rounding, Tensor? key_index) -> Tensor");
  // out[l] = (scale[l] * x[src[l]] + bias[l] - sub[l]) / div[l], in the input's float dtype.
  m.def(
      "block_affine(Tensor x, Tensor src, Tensor params, int block_size, Tensor? key_index) -> "
      "Tensor");
}
