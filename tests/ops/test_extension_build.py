"""The native extension is built, reports what it has, and a stale build is reported rather than used."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import sparsevision.ops as ops
from sparsevision.ops import library, schemas


def test_extension_loaded_with_cpu_kernels():
    info = ops.extension_info()
    assert info.loaded and info.cpu_kernels, str(info)


@pytest.mark.skipif(os.environ.get('CI') != 'true' or not (os.environ.get('CUDA_HOME') or shutil.which('nvcc')),
                    reason='CUDA kernels are only required in CI with a CUDA toolkit')
def test_ci_compiles_cuda_kernels():
    assert ops.extension_info().cuda_kernels, 'CI has nvcc, so the CUDA sources must have been compiled'


requires_extension = pytest.mark.skipif(not ops.extension_info().loaded, reason='sparsevision._C is not built')


@requires_extension
def test_extension_was_built_for_these_schemas():
    import sparsevision._C as native
    assert native.SCHEMA_FINGERPRINT == schemas.fingerprint()


class FakeExtension:
    """Stands in for sparsevision._C: its fingerprint, and what registering its kernels does."""
    WITH_CUDA = 0

    def __init__(self, fingerprint, registration_error=None):
        self.SCHEMA_FINGERPRINT = fingerprint
        self.registration_error = registration_error
        self.registered = False

    def register_kernels(self):
        if self.registration_error:
            raise self.registration_error
        self.registered = True


def test_a_stale_build_is_reported_and_its_kernels_not_registered():
    stale = FakeExtension('0123456789abcdef')
    info = library.register_kernels(stale)
    assert not info.loaded and 'stale build' in info.error and not stale.registered
    assert 'pure-PyTorch references' in str(info)


def test_a_registration_error_is_reported():
    broken = FakeExtension(schemas.fingerprint(), RuntimeError('schema mismatch for sparsevision::sparse_conv'))
    info = library.register_kernels(broken)
    assert not info.loaded and 'schema mismatch' in info.error
    current = FakeExtension(schemas.fingerprint())
    assert library.register_kernels(current).loaded and current.registered


@requires_extension
def test_a_changed_schema_falls_back_instead_of_aborting():
    """With the built extension but an op schema changed since the build, importing warns and runs the reference
    (registering the stale kernel would abort the process)."""
    script = textwrap.dedent('''
        import importlib.util, sys, warnings
        spec = importlib.util.spec_from_file_location('sparsevision.ops.schemas', sys.argv[1])
        schemas = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(schemas)
        schemas.SCHEMAS['select_tokens'] = schemas.SCHEMAS['select_tokens'].replace('int num_prefix)',
                                                                                    'int num_prefix, int extra=0)')
        sys.modules['sparsevision.ops.schemas'] = schemas
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import torch
            import sparsevision.ops as ops
        scores = torch.tensor([[0.1, 0.9, 0.5]])
        print(ops.extension_info().loaded, any('stale build' in str(w.message) for w in caught),
              torch.ops.sparsevision.select_tokens(scores, 2, 0).tolist())
    ''')
    result = subprocess.run([sys.executable, '-c', script, schemas.__file__], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split('\n')[-2] == 'False True [[1, 2]]'
