// The gradscope op library: schema declarations.
//
// The schema is declared once, here; each backend registers its kernel in its
// own file (grad_stats_cpu.cpp, grad_stats_cuda.cu), the fake kernel is
// registered from Python (gradscope/_ext.py), and the Python module with its
// fast entry is csrc/module.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "grad_stats.h"

namespace gradscope {
namespace {

// The kernel for calls no backend kernel takes. An empty list (no tensor names
// a device, so the dispatcher comes here) gets its empty result; sparse tensors
// and devices without a gradscope kernel get an error that says what to do.
at::Tensor grad_stats_fallback(at::TensorList tensors) {
  if (tensors.empty()) {
    return at::empty({0, kNumStats}, at::TensorOptions().dtype(at::kDouble));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].layout() == at::kStrided, "gradscope::grad_stats: tensors[", i, "] has layout ",
                tensors[i].layout(), "; the op reads dense tensors: convert it with .to_dense(), or use "
                "gradscope.grad_stats, which reads sparse COO tensors");
  }
  TORCH_CHECK(false, "gradscope::grad_stats has no kernel for ", tensors[0].device().type(),
              " tensors (it has CPU and CUDA kernels): move them with .cpu(), or use gradscope.grad_stats, "
              "which falls back to its PyTorch reference path");
}

}  // namespace
}  // namespace gradscope

TORCH_LIBRARY(gradscope, m) {
  // Per tensor: [sumsq, sum, sumabs, maxabs, nonfinite, zeros] as float64,
  // the first four over finite elements. See grad_stats.h.
  m.def("grad_stats(Tensor[] tensors) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradscope, CompositeExplicitAutograd, m) {
  m.impl("grad_stats", &gradscope::grad_stats_fallback);
}
