// gradscope._C: the Python module of the op library, with the fast entry that
// gradscope.grad_stats takes for the common call, and cpu_simd(), a diagnostic.
//
// The common call is a list of dense float tensors on one CPU or CUDA device.
// Going through torch.ops costs about 100 ns per tensor just to turn the
// Python list into the op's arguments, and gradscope.grad_stats adds its own
// checks in Python; for a 200-tensor list that is more than the CUDA kernel
// takes. The fast entry reads the list once, in C++, and calls the op through
// the dispatcher (so CPU, CUDA, profiling and dispatch modes behave exactly as
// for torch.ops.gradscope.grad_stats). Anything unusual (None, sparse, other
// dtypes, several devices, tensor subclasses, expanded views) is handed back
// to the Python path, which owns the error messages.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/util/MaybeOwned.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/object_ptr.h>
#include <torch/csrc/autograd/python_variable.h>

#include <vector>

#include "grad_stats.h"

namespace gradscope {
namespace {

// An expanded view (stride 0 along a dimension of size > 1) repeats elements:
// the Python path reads the tensor it repeats instead of copying it whole.
bool is_expanded(const at::Tensor& t) {
  if (t.is_non_overlapping_and_dense()) {
    return false;
  }
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) == 0 && t.size(d) > 1) {
      return true;
    }
  }
  return false;
}

// The tensors of Python objects, borrowed: no reference count changes (on a
// tensor that Python owns, each one costs tens of nanoseconds in recent torch,
// most of a small call's time). The caller keeps the Python objects alive.
class BorrowedTensors {
 public:
  explicit BorrowedTensors(size_t n) { tensors_.reserve(n); }  // never reallocates
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;
  ~BorrowedTensors() {
    for (at::Tensor& t : tensors_) {
      c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
    }
  }
  void add(const at::Tensor& t) { tensors_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(t)); }
  at::TensorList list() const { return tensors_; }

 private:
  std::vector<at::Tensor> tensors_;
};

// _dense_grad_stats(items: list | tuple, cuda_ok: bool)
//   -> (table [N, 6] float64, numel: bytes, one native int64 per tensor) | None
// None means "not the common call": the caller takes its general path.
PyObject* dense_grad_stats(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* items = nullptr;
  int cuda_ok = 0;
  if (!PyArg_ParseTuple(args, "Op", &items, &cuda_ok)) {
    return nullptr;
  }
  if (!PyList_CheckExact(items) && !PyTuple_CheckExact(items)) {
    Py_RETURN_NONE;
  }
  // A tuple of the items holds every tensor object alive while the GIL is
  // released below, whatever another thread does to the caller's list.
  THPObjectPtr owners(PyTuple_CheckExact(items) ? (Py_INCREF(items), items) : PyList_AsTuple(items));
  if (!owners) {
    return nullptr;
  }
  const Py_ssize_t n = PyTuple_GET_SIZE(owners.get());
  if (n == 0) {
    Py_RETURN_NONE;
  }
  PyObject** objs = PySequence_Fast_ITEMS(owners.get());

  BorrowedTensors tensors(static_cast<size_t>(n));
  c10::Device device(c10::kCPU);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* obj = objs[i];
    if (!THPVariable_CheckExact(obj)) {
      Py_RETURN_NONE;  // None, a subclass, or not a tensor
    }
    const at::Tensor& t = THPVariable_Unpack(obj);
    if (t.layout() != at::kStrided || !is_stat_dtype(t.scalar_type()) || is_expanded(t)) {
      Py_RETURN_NONE;
    }
    if (i == 0) {
      device = t.device();
      if (!(device.is_cpu() || (device.is_cuda() && cuda_ok))) {
        Py_RETURN_NONE;
      }
    } else if (t.device() != device) {
      Py_RETURN_NONE;
    }
    tensors.add(t);
  }

  // numel packed as native int64s: one allocation, where a tuple would cost a
  // Python int per tensor that most callers never read.
  THPObjectPtr numel(PyBytes_FromStringAndSize(nullptr, n * static_cast<Py_ssize_t>(sizeof(int64_t))));
  if (!numel) {
    return nullptr;
  }
  auto* packed = reinterpret_cast<int64_t*>(PyBytes_AS_STRING(numel.get()));
  for (Py_ssize_t i = 0; i < n; ++i) {
    packed[i] = tensors.list()[static_cast<size_t>(i)].numel();
  }

  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gradscope::grad_stats", "")
                             .typed<at::Tensor(at::TensorList)>();
  at::Tensor table;
  {
    // The statistics belong to no graph, whatever the inputs require: the call
    // goes below autograd straight to the backend kernel (unboxed, so no
    // per-tensor boxing either).
    pybind11::gil_scoped_release no_gil;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    table = op.call(tensors.list());
  }
  THPObjectPtr wrapped(THPVariable_Wrap(std::move(table)));
  if (!wrapped) {
    return nullptr;
  }
  return PyTuple_Pack(2, wrapped.get(), numel.get());
  END_HANDLE_TH_ERRORS
}

// Which SIMD path the CPU kernel takes on this machine: a diagnostic for
// `gradscope info` and the benchmarks, kept out of the op library's schema.
PyObject* cpu_simd(PyObject* /*self*/, PyObject* /*args*/) {
  HANDLE_TH_ERRORS
  return PyUnicode_FromString(cpu_simd_name().c_str());
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_dense_grad_stats", dense_grad_stats, METH_VARARGS,
     "grad_stats of a list of dense float tensors on one CPU or CUDA device; None for any other list."},
    {"cpu_simd", cpu_simd, METH_NOARGS, "The SIMD path of the CPU kernel on this machine: avx2 or generic."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace gradscope

extern "C" {
// `import gradscope._C` loads this library, whose static initializers register
// the ops (csrc/ops.cpp, csrc/grad_stats_cpu.cpp).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, gradscope::methods};
  return PyModule_Create(&module_def);
}
}
