// The gradscope op library: schema declarations and the Python module stub.
//
// The schema is declared once, here; each backend registers its kernel in its
// own file (grad_stats_cpu.cpp, grad_stats_cuda.cu) and the fake kernel is
// registered from Python (gradscope/_ext.py).
#include <Python.h>
#include <torch/library.h>

#include "grad_stats.h"

extern "C" {
// `import gradscope._C` loads this library, whose static initializers register
// the ops; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(gradscope, m) {
  // Per tensor: [sumsq, sum, sumabs, maxabs, nonfinite, zeros] as float64,
  // the first four over finite elements. See grad_stats.h.
  m.def("grad_stats(Tensor[] tensors) -> Tensor");
  // Which SIMD path the CPU kernel runs on this machine ("avx2" or "generic").
  m.def("cpu_simd() -> str", &gradscope::cpu_simd_name);
}
