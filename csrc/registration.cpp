// The one TORCH_LIBRARY block of the `kpfast` namespace; the schemas and what their arguments mean
// are in schemas.h.
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(kpfast, m) {
  m.set_python_module("kpfast.ops");
  m.def(kpfast::kBlockLutSchema);
  m.def(kpfast::kBlockAffineSchema);
}
