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

// diff_sumsq of no pairs, and an error for a device without its kernel (the
// monitor takes the foreach path there).
at::Tensor diff_sumsq_fallback(at::TensorList a, at::TensorList b) {
  TORCH_CHECK(a.empty() && b.empty(), "gradscope::diff_sumsq has a CPU kernel only; got ",
              (a.empty() ? b[0] : a[0]).device().type(), " tensors");
  return at::empty({0}, at::TensorOptions().dtype(at::kDouble));
}

// copy_sumsq likewise (the monitor copies with foreach elsewhere).
at::Tensor copy_sumsq_fallback(at::TensorList src, at::TensorList dst) {
  TORCH_CHECK(src.empty() && dst.empty(), "gradscope::copy_sumsq has a CPU kernel only; got ",
              (src.empty() ? dst[0] : src[0]).device().type(), " tensors");
  return at::empty({0}, at::TensorOptions().dtype(at::kDouble));
}

}  // namespace
}  // namespace gradscope

TORCH_LIBRARY(gradscope, m) {
  // Per tensor: [sumsq, sum, sumabs, maxabs, nonfinite, zeros] as float64,
  // the first four over finite elements. See grad_stats.h.
  m.def("grad_stats(Tensor[] tensors) -> Tensor");
  // Per pair (a[i], b[i]) of same-shaped tensors: sum((a - b)^2) as float64,
  // [N]. CPU only: the training monitor's update ratios (grad_stats_cpu.cpp).
  m.def("diff_sumsq(Tensor[] a, Tensor[] b) -> Tensor");
  // Per pair: dst[i] = src[i] (written in place) and sum(src[i]^2) as float64,
  // [N]. CPU only: the weights the monitor's update ratios keep, with their norms.
  m.def("copy_sumsq(Tensor[] src, Tensor(a!)[] dst) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradscope, CompositeExplicitAutograd, m) {
  m.impl("grad_stats", &gradscope::grad_stats_fallback);
  m.impl("diff_sumsq", &gradscope::diff_sumsq_fallback);
  m.impl("copy_sumsq", &gradscope::copy_sumsq_fallback);
}
