// The gradscope op library: schema declarations.
//
// The schema is declared once, here; each backend registers its kernel in its
// own file (grad_stats_cpu.cpp, grad_stats_cuda.cu), the fake kernel is
// registered from Python (gradscope/_ext.py), and the Python module with its
// fast entry is csrc/module.cpp.
#include <torch/library.h>

#include "grad_stats.h"

TORCH_LIBRARY(gradscope, m) {
  // Per tensor: [sumsq, sum, sumabs, maxabs, nonfinite, zeros] as float64,
  // the first four over finite elements. See grad_stats.h.
  m.def("grad_stats(Tensor[] tensors) -> Tensor");
  // Which SIMD path the CPU kernel runs on this machine ("avx2" or "generic").
  m.def("cpu_simd() -> str", &gradscope::cpu_simd_name);
}
