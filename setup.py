"""Builds is_kernels: the C++ CPU kernels (``is_kernels._C``) and the Python package.

The CUDA kernels are Triton and need no CUDA toolchain. Set ``IS_KERNELS_PORTABLE=1`` to
build without ``-march=native`` (for a binary that runs on other x86-64 machines).
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-Wno-unknown-pragmas"]


def _host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


if os.environ.get("IS_KERNELS_PORTABLE", "0") != "1":
    cxx_flags.append("-march=native")
    if _host_has_avx2():
        # Selects ATen's AVX2 Vectorized<T> (Sleef exp) instead of its scalar fallback.
        cxx_flags += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]

setup(
    name="is_kernels",
    version="0.1.0",
    description="Fast kernels and samplers for importance sampling of training examples",
    packages=find_packages(include=["is_kernels", "is_kernels.*"]),
    ext_modules=[
        CppExtension(
            "is_kernels._C",
            sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy"],
    extras_require={
        "triton": ["triton>=3.6"],
        "test": ["pytest", "triton>=3.6", "tqdm", "matplotlib", "torchdata==0.11.0",
                 "hypothesis", "torchrl>=0.14,<0.15", "tensordict>=0.14.3,<0.15"],
        "bench": ["pytest", "pytest-benchmark", "triton>=3.6", "cpprb", "tqdm", "matplotlib"],
        "train": ["tqdm", "matplotlib"],
        "torchrl": ["torchrl>=0.14,<0.15", "tensordict>=0.14.3,<0.15"],
    },
    entry_points={"console_scripts": ["is-kernels-train = is_kernels.train.cli:main"]},
)
