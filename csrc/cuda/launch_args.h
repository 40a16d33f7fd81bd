// What both CUDA wrappers hand to the torch-free launchers: the CUDA element type of a dtype, the
// layout of the images and the key arguments (contiguous copies kept alive with the scratch).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "kernels/block_ops.h"
#include "op_checks.h"

namespace kpfast::cuda {

template <typename T>
struct Tag {
  using type = T;
};

// Calls fn(Tag<T>{}) with the CUDA element type of a dtype the checks allowed (at::Half data is
// passed as __half, at::BFloat16 as __nv_bfloat16: same bits). uint8 only where kBytes.
template <bool kBytes, typename Fn>
void with_cuda_type(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: return fn(Tag<float>{});
    case at::kDouble: return fn(Tag<double>{});
    case at::kHalf: return fn(Tag<__half>{});
    case at::kBFloat16: return fn(Tag<__nv_bfloat16>{});
    case at::kByte:
      if constexpr (kBytes) return fn(Tag<uint8_t>{});
      [[fallthrough]];
    default: TORCH_CHECK(false, "kpfast: unexpected dtype ", t);
  }
}

inline kernels::BlockLayout block_layout(const at::Tensor& x, const BlockGeometry& g, at::MemoryFormat fmt) {
  return kernels::BlockLayout{g.N, g.C, g.H, g.W, g.M, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                              fmt == at::MemoryFormat::ChannelsLast};
}

// The key arguments of a launch; the tensors own the memory the raw pointers in `view` point to.
struct KeyArgs {
  at::Tensor src, key_index, offsets;  // offsets: the packing step's scratch [K * L]
  kernels::BlockKeys view;

  KeyArgs(const at::Tensor& src_, const std::optional<at::Tensor>& key_index_, const BlockGeometry& g,
          const at::Tensor& x)
      : src(src_.contiguous()),
        key_index(key_index_.has_value() ? key_index_->contiguous() : at::Tensor()),
        offsets(at::empty({g.K * g.L}, x.options().dtype(at::kLong))),
        view{src.const_data_ptr<int64_t>(), key_index.defined() ? key_index.const_data_ptr<int64_t>() : nullptr,
             g.K, offsets.mutable_data_ptr<int64_t>()} {}
};

}  // namespace kpfast::cuda
