"""Builds gradscope's compiled op with torch.utils.cpp_extension.

- ``gradscope._C`` (always): the op's schema and its CPU kernel.
- ``gradscope._C_cuda``: its CUDA kernel, built when a GPU is visible, or when
  ``FORCE_CUDA=1`` or ``TORCH_CUDA_ARCH_LIST`` is set (nvcc compiles without a
  GPU). Default architectures: ``8.0;9.0+PTX`` (A100, H100/H200, PTX for newer).

torch is not a build requirement (build isolation would fetch another torch):
install with ``pip install --no-build-isolation .``. The build records the torch,
CUDA and architectures it was built for in ``gradscope/_build_info.json``; the
loader refuses a build made for another torch.
"""

import json
import os
import sys

from setuptools import find_namespace_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit("gradscope: building needs torch installed first: `pip install torch`, then "
             "`pip install --no-build-isolation .`")

DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1" or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extensions(with_cuda: bool):
    cxx_flags = ["-O3", "-fopenmp"]  # -fopenmp: at::parallel_for's OpenMP region lives in the headers
    extensions = [
        CppExtension(
            "gradscope._C",
            ["csrc/ops.cpp", "csrc/module.cpp", "csrc/grad_stats_cpu.cpp"],
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]
    if with_cuda:
        if CUDA_HOME is None:
            sys.exit("gradscope: FORCE_CUDA=1 but no CUDA toolkit found; set CUDA_HOME to the toolkit folder")
        if torch.version.cuda is None:
            sys.exit(f"gradscope: FORCE_CUDA=1 but torch {torch.__version__} has no CUDA support")
        extensions.append(
            CUDAExtension(
                "gradscope._C_cuda",
                ["csrc/grad_stats_cuda.cu"],
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
            )
        )
    return extensions


class BuildWithRecord(BuildExtension):
    """Builds the extensions and records what they were built against."""

    def run(self):
        super().run()
        record = {
            "torch": torch.__version__,
            "cuda": WITH_CUDA,
            "cuda_version": torch.version.cuda if WITH_CUDA else None,
            "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
            "python": sys.version.split()[0],
        }
        target = os.path.join(os.path.dirname(self.get_ext_fullpath("gradscope._C")), "_build_info.json")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(record, f, indent=2)


WITH_CUDA = _want_cuda()
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST

setup(
    packages=find_namespace_packages(include=["gradscope", "gradscope.*"], exclude=["*.__pycache__"]),
    ext_modules=_extensions(WITH_CUDA),
    cmdclass={"build_ext": BuildWithRecord.with_options(use_ninja=True)},
    include_package_data=True,
)
