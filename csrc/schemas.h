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
//   block_src int64 [K, B] or None: block scrambling. The B = (H / M) * (W / M) blocks of an
//             image are numbered row-major; output block b reads input block block_src[k, b]
//             (None: block b), so a scrambled chain is still one gather per output element.
//             It has no default: inductor lowers the ops to their out= overloads and passes an
//             argument left at its default twice there (by position and by name).
// Below, x[b, l] is position l of block b. L = M * M * C is at most 2^31 - 1; images and tables
// are float32, float64, float16 or bfloat16 (images also uint8 on the table path). op_checks.h
// refuses anything else with a clear error.
//
// Each op has an out= overload (tagged `out`, as torch's own) that writes the output into a
// caller's buffer of the output's shape and dtype on the images' device: dense NCHW or
// channels_last buffers directly, any other non-overlapping layout through a copy. It records no
// gradient (an error if one is needed, as for torch's out= ops) and refuses a buffer that shares
// memory with an argument.
#pragma once

namespace kpfast {

#define KPFAST_BLOCK_LUT_ARGS                                                                     \
  "(Tensor x, Tensor src, Tensor table_id, Tensor tables, int block_size, float qscale, str rounding, " \
  "Tensor? key_index, Tensor? block_src"
#define KPFAST_BLOCK_AFFINE_ARGS \
  "(Tensor x, Tensor src, Tensor params, int block_size, Tensor? key_index, Tensor? block_src"

// out[b, l] = tables[table_id[l], level(x[block_src[b], src[l]])]; level = x for uint8 input, else
// quantize(x, qscale, V, rounding) with qscale > 0 finite and rounding "floor" or "nearest".
constexpr const char* kBlockLutSchema = "block_lut" KPFAST_BLOCK_LUT_ARGS ") -> Tensor";
constexpr const char* kBlockLutOutSchema = "block_lut.out" KPFAST_BLOCK_LUT_ARGS ", *, Tensor(a!) out) -> Tensor(a!)";

// out[b, l] = (scale[l] * x[block_src[b], src[l]] + bias[l] - sub[l]) / div[l], in the input's float dtype.
constexpr const char* kBlockAffineSchema = "block_affine" KPFAST_BLOCK_AFFINE_ARGS ") -> Tensor";
constexpr const char* kBlockAffineOutSchema =
    "block_affine.out" KPFAST_BLOCK_AFFINE_ARGS ", *, Tensor(a!) out) -> Tensor(a!)";

#undef KPFAST_BLOCK_LUT_ARGS
#undef KPFAST_BLOCK_AFFINE_ARGS

}  // namespace kpfast
