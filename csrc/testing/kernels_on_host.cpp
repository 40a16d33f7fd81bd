// The CUDA kernels' element code run on the CPU, so that their index math and vector packing are
// tested on machines without a GPU. Built by tests/test_cuda.py with torch.utils.cpp_extension
// (never by CMake, never shipped). The ops kpfast_on_host::block_lut / block_affine (and their
// out= overloads) take the schemas of kpfast's ops and do what the CUDA ops and launchers do, with
// the kernels' own code: the same checked entry (op_args.h), step 1 through kernels::pack_key and
// pack_block for every (key, position) and (key, block) entry, then every group of the launch
// through lut_group / affine_group, with the group size the launcher picks. Only the grid-stride
// loop and the shared-memory copy of small tables stay on the device.
#include <c10/util/Exception.h>

// A bad key value the kernels would stop at with a device-side assert is an error here.
#define KPFAST_KERNEL_ASSERT(cond, msg) TORCH_CHECK(cond, msg)

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/block_rows.h"
#include "kernels/block_groups.h"
#include "op_args.h"
#include "schemas.h"

namespace kpfast::on_host {
namespace {

namespace detail = kernels::detail;

// Every group of one launch of the element kernel, in order (the device runs them in parallel;
// groups write disjoint outputs and read nothing that another group writes).
template <typename Out, typename Group>
void run_groups(const kernels::BlockLayout& layout, const Out* out, const Group& group) {
  detail::with_group_size(layout, out, [&](auto G) {
    const detail::Traversal t = detail::Traversal::make(layout, G);
    for (int64_t g = 0; g < t.groups; ++g) group(t, G, g);
  });
}

void block_lut_on_host(const LutCall& call, const at::Tensor& x) {
  cpu::pack_keys<true>("kpfast.block_lut", call, call.table_id.const_data_ptr<int64_t>(), call.T, call.V);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, x.scalar_type(), "lut_in", [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.tables.scalar_type(), "lut_out", [&] {
      using Out = scalar_t;
      const auto a = detail::lut_args(call.keys, x.const_data_ptr<In>(), call.tables.const_data_ptr<Out>(),
                                      call.T, call.V, call.qscale, call.rounding, call.out.mutable_data_ptr<Out>());
      run_groups(call.layout, a.out, [&](const detail::Traversal& t, auto G, int64_t g) {
        detail::lut_group<In, Out, decltype(G)::value>(t, a, a.tables, g);
      });
    });
  });
}

void block_affine_on_host(const AffineCall& call, const at::Tensor& x) {
  cpu::pack_keys<false>("kpfast.block_affine", call);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine", [&] {
    using T = scalar_t;
    const detail::AffineArgs<T> a{x.const_data_ptr<T>(), call.keys,
                                  call.coef.const_data_ptr<kernels::math_t<T>>(), call.out.mutable_data_ptr<T>()};
    run_groups(call.layout, a.out, [&](const detail::Traversal& t, auto G, int64_t g) {
      detail::affine_group<T, decltype(G)::value>(t, a, g);
    });
  });
}

}  // namespace
}  // namespace kpfast::on_host

TORCH_LIBRARY(kpfast_on_host, m) {
  using namespace kpfast;
  m.def(kBlockLutSchema, &block_lut_op<on_host::block_lut_on_host>);
  m.def(kBlockLutOutSchema, &block_lut_out_op<on_host::block_lut_on_host>);
  m.def(kBlockAffineSchema, &block_affine_op<on_host::block_affine_on_host>);
  m.def(kBlockAffineOutSchema, &block_affine_out_op<on_host::block_affine_on_host>);
}
