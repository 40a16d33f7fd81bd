// The one TORCH_LIBRARY block of the `kpfast` namespace; the schemas and what their arguments mean
// are in schemas.h. The out= overloads carry torch's `out` tag (their mutable argument is a
// write-only buffer), which lets torch.compile functionalise them.
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(kpfast, m) {
  m.set_python_module("kpfast.ops");
  m.def(kpfast::kBlockLutSchema);
  m.def(kpfast::kBlockLutOutSchema, {at::Tag::out});
  m.def(kpfast::kBlockAffineSchema);
  m.def(kpfast::kBlockAffineOutSchema, {at::Tag::out});
}
