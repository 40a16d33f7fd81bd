// kpfast._C: a torch-free pybind11 module. Importing it loads this shared library, whose other
// translation units register the torch ops (TORCH_LIBRARY); this unit only reports how it was built.
// No torch header may be included here, so torch's bundled pybind11 never meets pip's.
#include <pybind11/pybind11.h>

#ifndef KPFAST_TORCH_VERSION
#define KPFAST_TORCH_VERSION "unknown"
#endif
#ifndef KPFAST_CUDA_ARCHS
#define KPFAST_CUDA_ARCHS ""
#endif
#ifndef KPFAST_CUDA_VERSION
#define KPFAST_CUDA_VERSION ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "kpfast native library (ops are registered under torch.ops.kpfast)";
  m.def("build_info", [] {
    py::dict info;
#ifdef KPFAST_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = KPFAST_CUDA_ARCHS;
    info["cuda_version"] = KPFAST_CUDA_VERSION;
    info["torch_version"] = KPFAST_TORCH_VERSION;
    return info;
  }, "How this kpfast build was made: CUDA or not, CUDA architectures, torch version built against.");
}
