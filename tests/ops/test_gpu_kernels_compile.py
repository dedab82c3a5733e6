"""Every Triton kernel of ``ops/gpu/spike_conv.py`` and ``ops/gpu/batch_norm.py`` compiles ahead of time for sm_80
and sm_90 (no GPU needed) without spills, local memory or atomics."""
import os
import re
import subprocess

import pytest
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparsevision.ops.gpu import batch_norm, spike_conv

ARCHITECTURES = [80, 90]
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
BLOCKS = dict(CHUNK_ROWS=batch_norm.CHUNK_ROWS, STEP_ROWS=batch_norm.STEP_ROWS, BLOCK_CHUNKS=batch_norm.BLOCK_CHUNKS,
              BLOCK_ROWS=batch_norm.BLOCK_ROWS, BLOCK_COLUMNS=batch_norm.MAX_BLOCK_COLUMNS, ACCUMULATE=tl.float32)
ROWS = {name: '*bf16' for name in ('rows', 'residual', 'out', 'mean', 'var', 'grad_out', 'relu_out', 'grad_rows',
                                   'grad_weight', 'grad_bias')}
PARTIALS = {name: '*fp32' for name in ('partial_sums', 'partial_squares', 'partial_sum_g', 'partial_sum_gx',
                                       'coefficients', 'weight', 'bias')}
SCALARS = {'eps': 'fp32'}
# kernel, pointer and scalar types by argument name (the rest i32), constexprs (those the kernel takes)
KERNELS = {
    'spike_conv': (spike_conv.spike_conv_kernel, {'spikes': '*bf16', 'weight': '*bf16', 'neighbors': '*i32',
                                                  'out': '*bf16'},
                   dict(BLOCK_ROWS=spike_conv.BLOCK_ROWS, BLOCK_OUT=spike_conv.MAX_BLOCK_OUT, ACCUMULATE=tl.float32)),
    'chunk_moments': (batch_norm.chunk_moments_kernel, {}, BLOCKS),
    'combine_moments': (batch_norm.combine_moments_kernel, {}, dict(BLOCKS, HAS_WEIGHT=True, HAS_BIAS=True)),
    'normalise_rows': (batch_norm.normalise_rows_kernel, {}, dict(BLOCKS, HAS_RESIDUAL=True, RELU=True)),
    'chunk_gradient_sums': (batch_norm.chunk_gradient_sums_kernel, {}, dict(BLOCKS, HAS_RELU=True)),
    'combine_gradient_sums': (batch_norm.combine_gradient_sums_kernel, {}, dict(BLOCKS, HAS_WEIGHT=True)),
    'rows_gradient': (batch_norm.rows_gradient_kernel, {}, dict(BLOCKS, HAS_RELU=True)),
}


def compile_for(kernel, types, constexprs, architecture):
    """``triton.compile`` of ``kernel`` for ``sm_<architecture>``, pointers 16-byte aligned as torch's are."""
    names = kernel.arg_names
    constexprs = {name: value for name, value in constexprs.items() if name in names}
    known = {**ROWS, **PARTIALS, **SCALARS, **types}
    signature = {name: 'constexpr' if name in constexprs else known.get(name, 'i32') for name in names}
    aligned = {(index,): [['tt.divisibility', 16]] for index, name in enumerate(names)
               if signature[name].startswith('*')}
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=GPUTarget('cuda', architecture, 32))


def resource_usage(cubin: bytes, tmp_path) -> dict:
    """``{'REG': n, 'STACK': n, 'LOCAL': n, ...}`` of the cubin's one function, read by cuobjdump."""
    path = tmp_path / 'kernel.cubin'
    path.write_bytes(cubin)
    report = subprocess.run([CUOBJDUMP, '-res-usage', str(path)], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r'(REG|STACK|SHARED|LOCAL):(\d+)', report)}


@pytest.mark.parametrize('architecture', ARCHITECTURES)
@pytest.mark.parametrize('name', KERNELS)
def test_compiles_without_spills_or_atomics(name, architecture, tmp_path):
    compiled = compile_for(*KERNELS[name], architecture)
    usage = resource_usage(compiled.asm['cubin'], tmp_path)
    assert usage['STACK'] == 0 and usage['LOCAL'] == 0, usage
    assert usage['REG'] <= 168, usage   # leaves at least 3 blocks of 4 warps per SM
    assert not re.search(r'\b(atom|red)\.', compiled.asm['ptx']), 'atomics make sums depend on scheduling'
