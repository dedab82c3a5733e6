"""Every Triton kernel of ``ops/gpu/spike_conv.py`` and ``ops/gpu/batch_norm.py`` compiles ahead of time for sm_80
and sm_90 (no GPU needed) without spills, local memory or atomics, and within a register budget."""
import pytest
import triton.language as tl
from triton_compile import compile_for

from sparsevision.ops.gpu import batch_norm, spike_conv

# (architecture, data type): bfloat16 (float32 accumulation) for both, float64 for sm_90
BUILDS = [(80, 'bf16'), (90, 'bf16'), (90, 'fp64')]
# at most 168 registers leaves 3 blocks of 4 warps per SM; float64 only must not spill
REGISTER_LIMITS = {'bf16': 168, 'fp64': 255}
CONSTEXPRS = dict(CHUNK_ROWS=batch_norm.CHUNK_ROWS, STEP_ROWS=batch_norm.STEP_ROWS,
                  BLOCK_CHUNKS=batch_norm.BLOCK_CHUNKS, BLOCK_COLUMNS=batch_norm.MAX_BLOCK_COLUMNS,
                  BLOCK_OUT=spike_conv.MAX_BLOCK_OUT, HAS_WEIGHT=True, HAS_BIAS=True, HAS_RESIDUAL=True, RELU=True,
                  HAS_RELU=True)
# pointer arguments by name: tensors of the data type, and float32 (float64) ones: partials, affine parameters
DATA_POINTERS = ('rows', 'residual', 'out', 'mean', 'var', 'grad_out', 'relu_out', 'grad_rows', 'grad_weight',
                 'grad_bias', 'spikes')
ACCUMULATOR_POINTERS = ('partial_sums', 'partial_squares', 'partial_sum_g', 'partial_sum_gx', 'coefficients',
                        'weight', 'bias')
KERNELS = {kernel.__name__: (kernel, module) for module, kernel in (
    (spike_conv, spike_conv.spike_conv_kernel), (batch_norm, batch_norm.chunk_moments_kernel),
    (batch_norm, batch_norm.combine_moments_kernel), (batch_norm, batch_norm.normalise_rows_kernel),
    (batch_norm, batch_norm.chunk_gradient_sums_kernel), (batch_norm, batch_norm.combine_gradient_sums_kernel),
    (batch_norm, batch_norm.rows_gradient_kernel))}


def compile_kernel(kernel, module, architecture, data_type):
    """``kernel`` (of ``module``) compiled for ``sm_<architecture>`` and ``data_type`` tensors, with the block sizes
    the module launches it with, pointers 16-byte aligned as torch's are."""
    names = kernel.arg_names
    accumulate = 'fp64' if data_type == 'fp64' else 'fp32'
    values = dict(CONSTEXPRS, BLOCK_ROWS=module.BLOCK_ROWS, ACCUMULATE=getattr(tl, f'float{accumulate[2:]}'))
    constexprs = {name: value for name, value in values.items() if name in names}
    types = {**{name: f'*{accumulate}' for name in ACCUMULATOR_POINTERS},
             **{name: f'*{data_type}' for name in DATA_POINTERS}, 'neighbors': '*i32', 'eps': 'fp32'}
    if module is spike_conv:
        types['weight'] = f'*{data_type}'
    signature = {name: 'constexpr' if name in constexprs else types.get(name, 'i32') for name in names}
    aligned = {(index,): [['tt.divisibility', 16]] for index, name in enumerate(names)
               if signature[name].startswith('*')}
    return compile_for(kernel, signature, constexprs, architecture, attrs=aligned)


@pytest.mark.parametrize('architecture, data_type', BUILDS, ids=[f'sm{a}-{t}' for a, t in BUILDS])
@pytest.mark.parametrize('name', KERNELS)
def test_compiles_without_spills_or_atomics(name, architecture, data_type):
    compiled = compile_kernel(*KERNELS[name], architecture, data_type)
    assert compiled.local_bytes == 0, compiled
    assert compiled.registers <= REGISTER_LIMITS[data_type], compiled
    assert not compiled.atomics, 'atomics make sums depend on scheduling'
