"""The native extension is built and reports what it has."""
import os
import shutil

import pytest

import sparsevision.ops as ops


def test_extension_loaded_with_cpu_kernels():
    info = ops.extension_info()
    assert info.loaded and info.cpu_kernels, str(info)


@pytest.mark.skipif(os.environ.get('CI') != 'true' or not (os.environ.get('CUDA_HOME') or shutil.which('nvcc')),
                    reason='CUDA kernels are only required in CI with a CUDA toolkit')
def test_ci_compiles_cuda_kernels():
    assert ops.extension_info().cuda_kernels, 'CI has nvcc, so the CUDA sources must have been compiled'
