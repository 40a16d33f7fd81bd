// The autograd side of the out= overloads (block_lut.out, block_affine.out), as torch's own out=
// ops behave: they record no gradient, so a call that would need one is an error rather than a
// result silently cut off from the graph, and writing the buffer bumps its version counter, so
// that autograd notices when a tensor it saved was overwritten. One boxed kernel serves both ops.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <string>

namespace kpfast {
namespace {

// "kpfast.block_lut.out", as the ops name themselves in their errors.
std::string name_of(const c10::OperatorHandle& op) {
  std::string name = op.schema().name();
  name.replace(name.find("::"), 2, ".");
  return name + "." + op.schema().overload_name();
}

// Autograd key: refuse a call that needs a gradient, then go on below autograd.
void refuse_gradients(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  if (at::GradMode::is_enabled()) {
    for (size_t i = 0; i < args.size(); ++i) {
      const c10::IValue& v = (*stack)[stack->size() - args.size() + i];
      TORCH_CHECK(!(v.isTensor() && v.toTensor().requires_grad()), name_of(op), ": out= records no gradient, but ",
                  args[i].name(), " requires grad; call the op without out= (or under torch.no_grad())");
    }
  }
  const at::AutoDispatchBelowAutograd below;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView key: run the op, then bump the version of the buffer it wrote.
void bump_out_version(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  torch::autograd::impl::bump_version(stack->back().toTensor());  // the op returns its out= buffer
}

}  // namespace

TORCH_LIBRARY_IMPL(kpfast, Autograd, m) {
  m.impl("block_lut.out", torch::CppFunction::makeFromBoxedFunction<&refuse_gradients>());
  m.impl("block_affine.out", torch::CppFunction::makeFromBoxedFunction<&refuse_gradients>());
}

TORCH_LIBRARY_IMPL(kpfast, ADInplaceOrView, m) {
  m.impl("block_lut.out", torch::CppFunction::makeFromBoxedFunction<&bump_out_version>());
  m.impl("block_affine.out", torch::CppFunction::makeFromBoxedFunction<&bump_out_version>());
}

}  // namespace kpfast
