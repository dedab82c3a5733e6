"""The Triton implicit-GEMM convolution (ops/gpu) against the CPU kernel and the reference.

The kernel tests run on CUDA where there is a GPU. Without one, ``test_kernels_in_the_triton_interpreter`` reruns
this module in a child process with ``TRITON_INTERPRET=1`` (Triton reads it when kernels are defined, and these
kernels span several modules that share ``triton_settings``, so a whole fresh process is simpler than the private
re-import tests/triton_interpreter.py does for single-module kernels), where the same tests run the kernels on CPU
tensors; the variable never reaches this process. The AOT test compiles every kernel for sm_80 and sm_90 here.
"""
import os

import pytest
import torch
from sparsevision.utils.host_syncs import HostSyncs
from triton_compile import compile_for

import sparsevision.ops as ops
from sparsevision.ops import map_validation, reference
from sparsevision.ops.conv_algorithms import ConvAlgorithm, use_conv_algorithm
from sparsevision.ops.coordinates import keys_to_coordinates
from sparsevision.ops.gpu import conv

triton = pytest.importorskip('triton')

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
ON_GPU = torch.cuda.is_available() and not INTERPRETED
needs_kernels = pytest.mark.skipif(not (ON_GPU or INTERPRETED), reason='no GPU: these run in the Triton interpreter '
                                   'subprocess of test_kernels_in_the_triton_interpreter')
in_parent_process = pytest.mark.skipif(INTERPRETED, reason='runs in the parent process only')
CPU_SPARSE_CONV = torch.ops.sparsevision.sparse_conv.default
CPU_WEIGHT_GRAD = torch.ops.sparsevision.sparse_conv_weight_grad.default


@pytest.fixture
def device() -> str:
    """Where the kernels run: the GPU, or the CPU through the Triton interpreter."""
    return 'cuda' if ON_GPU else 'cpu'


def test_kernels_in_the_triton_interpreter(python_process):
    if ON_GPU or INTERPRETED:
        pytest.skip('the kernel tests run in this process')
    result = python_process(['-m', 'pytest', __file__, '-q', '-p', 'no:cacheprovider', '-W', 'ignore::RuntimeWarning'],
                            env={'TRITON_INTERPRET': '1'}, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def scene(count, dims, strided=False, seed=0):
    """A kernel map (k3, submanifold or stride 2) and its inverse over ``count`` random sites of a small grid."""
    shape = [6, 7, 8] if dims == 3 else [16, 18]
    generator = torch.Generator().manual_seed(seed)
    sites = keys_to_coordinates(torch.randperm(2 * int(torch.tensor(shape).prod()), generator=generator)[:count],
                                shape)
    if strided:
        outputs, _ = ops.downsample_indices(sites, shape, 3, 2, 1)
        neighbors = ops.build_kernel_map(sites, outputs, shape, 3, 2, 1)
    else:
        neighbors = ops.submanifold_kernel_map(sites, shape, 3)
    return neighbors, ops.invert_kernel_map(neighbors, count)


def random_tensors(*shapes, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype) for shape in shapes]


def on(device, *tensors):
    return [tensor.to(device) for tensor in tensors]


def gpu_conv_and_gradients(features, weight, neighbors, inverse, groups, grad_output):
    """Forward, input gradient (the forward on the inverse map) and weight gradient through ops/gpu/conv.py."""
    out = conv.sparse_conv_cuda(features, weight, neighbors, inverse, groups)
    grad_features = conv.sparse_conv_cuda(grad_output, ops.transpose_weight(weight, groups), inverse, neighbors,
                                          groups)
    grad_weight = conv.sparse_conv_weight_grad_cuda(features, grad_output, neighbors, inverse, groups)
    return out, grad_features, grad_weight


def cpu_conv_and_gradients(features, weight, neighbors, inverse, groups, grad_output):
    return (CPU_SPARSE_CONV(features, weight, neighbors, inverse, groups),
            CPU_SPARSE_CONV(grad_output, ops.transpose_weight(weight, groups), inverse, neighbors, groups),
            CPU_WEIGHT_GRAD(features, grad_output, neighbors, inverse, groups))


@needs_kernels
@pytest.mark.parametrize('dims, strided, groups, in_per_group, out_per_group', [
    (3, False, 1, 3, 5),     # channels that are no multiple of 16
    (3, True, 1, 16, 48),
    (2, False, 2, 4, 6),
    (2, True, 4, 2, 3),
    (2, False, 16, 1, 1),    # depthwise
    (3, True, 8, 1, 1),
])
def test_fp32_matches_cpu_kernel(device, dims, strided, groups, in_per_group, out_per_group):
    neighbors, inverse = scene(150 if dims == 3 else 200, dims, strided)
    features, weight, grad_output = random_tensors([inverse.shape[0], groups * in_per_group],
                                                   [neighbors.shape[1], in_per_group, groups * out_per_group],
                                                   [neighbors.shape[0], groups * out_per_group])
    expected = cpu_conv_and_gradients(features, weight, neighbors, inverse, groups, grad_output)
    results = gpu_conv_and_gradients(*on(device, features, weight, neighbors, inverse), groups, grad_output.to(device))
    for result, wanted in zip(results, expected):
        torch.testing.assert_close(result.cpu(), wanted, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('groups, in_per_group, out_per_group', [(1, 16, 16), (8, 1, 1)])
def test_reduced_precision_rounds_once(device, dtype, groups, in_per_group, out_per_group):
    """fp32 accumulation, one rounding: within one unit of the output's precision of the exact result."""
    neighbors, inverse = scene(200, 2)
    features, weight, grad_output = random_tensors([inverse.shape[0], groups * in_per_group],
                                                   [9, in_per_group, groups * out_per_group],
                                                   [neighbors.shape[0], groups * out_per_group], dtype=dtype)
    exact = (reference.sparse_conv(features.double(), weight.double(), neighbors, inverse, groups),
             reference.sparse_conv_weight_grad(features.double(), grad_output.double(), neighbors, inverse, groups))
    results = (conv.sparse_conv_cuda(*on(device, features, weight, neighbors, inverse), groups),
               conv.sparse_conv_weight_grad_cuda(*on(device, features, grad_output, neighbors, inverse), groups))
    for result, wanted in zip(results, exact):
        assert result.dtype == dtype
        error = (result.cpu().double() - wanted).abs().max()
        assert error <= torch.finfo(dtype).eps * wanted.abs().max(), (error, wanted.abs().max())


@needs_kernels
def test_bitwise_reproducible(device):
    neighbors, inverse = scene(200, 2, seed=3)
    features, weight, grad_output = on(device, *random_tensors([200, 16], [9, 16, 32], [200, 32], seed=3))
    neighbors, inverse = on(device, neighbors, inverse)
    first = gpu_conv_and_gradients(features, weight, neighbors, inverse, 1, grad_output)
    again = gpu_conv_and_gradients(features, weight, neighbors, inverse, 1, grad_output)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def out_of_range_map():
    neighbors = torch.tensor([[0, 1, -1], [4, 2, 2**31 - 1], [-5, -1, 3], [-1, -1, -1]], dtype=torch.int32)
    return neighbors, torch.where((neighbors >= 0) & (neighbors < 4), neighbors, -1)   # what the kernels read


@needs_kernels
@pytest.mark.parametrize('case', ['empty_map', 'no_inputs', 'single_site', 'no_neighbors', 'all_taps_one_input',
                                  'out_of_range_entries'])
def test_adversarial_maps_match_reference(device, case):
    """Degenerate maps; entries out of range are read as absent by the kernels themselves (never out of bounds)."""
    from sparsevision.ops.gpu.implicit_gemm import implicit_gemm_conv
    from sparsevision.ops.gpu.implicit_gemm_weight_grad import implicit_gemm_weight_grad
    inputs, taps = (0 if case == 'no_inputs' else 4), 3
    neighbors = {'empty_map': torch.zeros(0, taps, dtype=torch.int32),
                 'no_inputs': torch.full((3, taps), -1, dtype=torch.int32),
                 'single_site': torch.tensor([[-1, 0, -1]], dtype=torch.int32),
                 'no_neighbors': torch.full((5, taps), -1, dtype=torch.int32),
                 'all_taps_one_input': torch.zeros(2, taps, dtype=torch.int32),
                 'out_of_range_entries': out_of_range_map()[0]}[case]
    meant = out_of_range_map()[1] if case == 'out_of_range_entries' else neighbors
    for groups, in_per_group, out_per_group in [(1, 5, 7), (6, 1, 1)]:
        features, weight, grad_output = random_tensors([inputs, groups * in_per_group],
                                                       [taps, in_per_group, groups * out_per_group],
                                                       [neighbors.shape[0], groups * out_per_group])
        out = implicit_gemm_conv(*on(device, features, weight, neighbors), groups)
        grad_weight = implicit_gemm_weight_grad(*on(device, features, grad_output, neighbors), groups)
        torch.testing.assert_close(out.cpu(), reference.sparse_conv(features, weight, meant, None, groups))
        torch.testing.assert_close(grad_weight.cpu(),
                                   reference.sparse_conv_weight_grad(features, grad_output, meant, None, groups))


@needs_kernels
def test_out_of_range_map_raises_at_the_op(device):
    neighbors = on(device, out_of_range_map()[0])[0]
    features, weight, grad_output = on(device, *random_tensors([4, 2], [3, 2, 3], [4, 3]))
    with pytest.raises(ValueError, match='kernel map entries must be -1 or rows of features'):
        conv.sparse_conv_cuda(features, weight, neighbors, neighbors, 1)
    with pytest.raises(ValueError, match='kernel map entries must be -1 or rows of features'):
        conv.sparse_conv_weight_grad_cuda(features, grad_output, neighbors, neighbors, 1)


@needs_kernels
def test_no_host_sync_once_the_map_is_checked(device):
    neighbors, inverse = scene(120, 2, seed=5)
    features, weight, grad_output = on(device, *random_tensors([120, 4], [9, 4, 8], [120, 8]))
    unchecked = neighbors.clone().to(device)   # a map no builder marked: checked (one sync) on first use
    inverse = inverse.to(device)
    with HostSyncs() as first_call:
        conv.sparse_conv_cuda(features, weight, unchecked, inverse, 1)
    assert first_call.seen == ['aten::_local_scalar_dense']   # the check, which the mode must see
    with HostSyncs() as later_calls:
        conv.sparse_conv_cuda(features, weight, unchecked, inverse, 1)
        conv.sparse_conv_weight_grad_cuda(features, grad_output, unchecked, inverse, 1)
        conv.sparse_conv_cuda(grad_output, ops.transpose_weight(weight, 1), inverse, unchecked, 1)
    assert later_calls.seen == []


def test_map_checks_are_remembered_per_version_and_forgotten_with_the_map():
    neighbors = torch.tensor([[0, -1], [1, 2]], dtype=torch.int32)
    with HostSyncs() as syncs:
        map_validation.require_valid(neighbors, 3, 'op')
        map_validation.require_valid(neighbors, 5, 'op')
    assert len(syncs.seen) == 1
    with pytest.raises(ValueError, match='kernel map entries must be -1 or rows of features'):
        map_validation.require_valid(neighbors, 2, 'op')
    neighbors[0, 1] = -2   # an in-place edit: checked again
    with pytest.raises(ValueError, match='kernel map entries'):
        map_validation.require_valid(neighbors, 3, 'op')
    remembered = len(map_validation.checked_maps)
    del neighbors
    assert len(map_validation.checked_maps) == remembered - 1


def test_built_maps_need_no_check():
    neighbors, inverse = scene(50, 2)
    with HostSyncs() as syncs:
        map_validation.require_valid(neighbors, 50, 'op')
        map_validation.require_valid(inverse, neighbors.shape[0], 'op')
    assert syncs.seen == []


def test_unchecked_map_under_graph_capture_raises(monkeypatch):
    monkeypatch.setattr(map_validation, 'capturing', lambda neighbors: True)
    with pytest.raises(ValueError, match='CUDA-graph capture'):
        map_validation.require_valid(torch.zeros(2, 3, dtype=torch.int32), 1, 'sparse_conv')


def test_tensors_on_two_devices_raise():
    features, weight = torch.randn(3, 4), torch.randn(27, 4, 8)
    neighbors = torch.full((2, 27), -1, dtype=torch.int32)
    with pytest.raises(ValueError, match='one device'):
        ops.sparse_conv(features, weight, neighbors.to('meta'), torch.full((3, 27), -1, dtype=torch.int32))
    with pytest.raises(ValueError, match='one device'):
        conv.sparse_conv_cuda(features, weight.to('meta'), neighbors, neighbors, 1)
    with pytest.raises(ValueError, match='one device'):
        conv.sparse_conv_weight_grad_cuda(features, torch.randn(2, 8), neighbors.to('meta'), neighbors, 1)


def test_gpu_conv_algorithm():
    weight = torch.randn(27, 4, 8)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert conv.gpu_conv_algorithm(torch.randn(3, 4, dtype=dtype), weight.to(dtype), 1) == 'implicit_gemm'
    features64, weight64 = torch.randn(3, 4, dtype=torch.float64), weight.double()
    assert conv.gpu_conv_algorithm(features64, weight64, 1) is ConvAlgorithm.GATHER_GEMM
    with use_conv_algorithm('gather_gemm'):
        assert conv.gpu_conv_algorithm(torch.randn(3, 4), weight, 1) is ConvAlgorithm.GATHER_GEMM
    with use_conv_algorithm('implicit_gemm'), pytest.raises(ValueError, match='cannot take torch.float64'):
        conv.gpu_conv_algorithm(features64, weight64, 1)
    with use_conv_algorithm('row_pairs'), pytest.raises(ValueError, match='runs on the CPU'):
        conv.gpu_conv_algorithm(torch.randn(3, 4), weight, 1)


@in_parent_process
def test_fp32_dots_use_tf32_only_where_pytorch_allows_it(python_process):
    """In a fresh process: PyTorch's TF32 switches are global and cannot be reset to their untouched state."""
    script = """
import torch
from sparsevision.ops.gpu.triton_settings import input_precision
precisions = [input_precision(torch.float32)]
torch.backends.cuda.matmul.allow_tf32 = True
precisions += [input_precision(torch.float32), input_precision(torch.bfloat16)]
torch.backends.cuda.matmul.fp32_precision = 'ieee'
precisions.append(input_precision(torch.float32))
torch.set_float32_matmul_precision('high')
precisions.append(input_precision(torch.float32))
print(precisions)
"""
    result = python_process(['-W', 'ignore', '-c', script])
    assert result.stdout.split('\n')[-2] == "['ieee', 'tf32', 'ieee', 'ieee', 'tf32']", result.stderr[-2000:]


TRITON_TYPES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
PRECISIONS = [(torch.bfloat16, 'ieee'), (torch.float16, 'ieee'), (torch.float32, 'ieee'), (torch.float32, 'tf32')]
# Per kernel and arch: (registers per thread, shared memory bytes) as measured with Triton 3.8 at the widest tiles
# (64 channels per group), about 10 % over the registers and 25 % over the shared memory. No local memory at all.
RESOURCE_BUDGETS = {
    'forward bf16 ieee': {80: (228, 10240), 90: (184, 10240)},
    'forward fp16 ieee': {80: (228, 10240), 90: (184, 10240)},
    'forward fp32 ieee': {80: (197, 7680), 90: (141, 7680)},
    'forward fp32 tf32': {80: (185, 20480), 90: (168, 20480)},
    'weight_grad bf16 ieee': {80: (252, 20480), 90: (185, 20480)},
    'weight_grad fp16 ieee': {80: (252, 20480), 90: (185, 20480)},
    'weight_grad fp32 ieee': {80: (185, 20480), 90: (141, 20480)},
    'weight_grad fp32 tf32': {80: (248, 20480), 90: (185, 40960)},
    'depthwise bf16': {80: (140, 0), 90: (165, 0)},
    'depthwise fp32': {80: (140, 0), 90: (169, 0)},
    'depthwise_weight_grad bf16': {80: (113, 640), 90: (95, 640)},
    'depthwise_weight_grad fp32': {80: (114, 640), 90: (106, 640)},
}


def aot_cases():
    """``(name, kernel, signature, constexprs)`` of every kernel, at its widest tiles, in every precision it runs."""
    from sparsevision.ops.gpu import implicit_gemm, implicit_gemm_weight_grad as weight_grad
    cases = []
    for dtype, precision in PRECISIONS:
        element = '*' + TRITON_TYPES[dtype]
        dot = dict(INPUT_PRECISION=precision, WIDEN_OPERANDS=False)
        cases.append((f'forward {TRITON_TYPES[dtype]} {precision}', implicit_gemm.implicit_gemm_kernel,
                      dict(features=element, weight=element, out=element),
                      dict(**implicit_gemm.forward_tiles(64, 64, dtype, precision), **dot)))
        cases.append((f'weight_grad {TRITON_TYPES[dtype]} {precision}', weight_grad.weight_grad_kernel,
                      dict(features=element, grad_output=element, partials='*fp32'),
                      dict(**weight_grad.weight_grad_tiles(64, 64, dtype, precision), **dot)))
    for dtype in (torch.bfloat16, torch.float32):
        element = '*' + TRITON_TYPES[dtype]
        cases.append((f'depthwise {TRITON_TYPES[dtype]}', implicit_gemm.depthwise_kernel,
                      dict(features=element, weight=element, out=element),
                      dict(BLOCK_M=implicit_gemm.DEPTHWISE_BLOCK_ROWS, BLOCK_C=implicit_gemm.DEPTHWISE_BLOCK_CHANNELS)))
        cases.append((f'depthwise_weight_grad {TRITON_TYPES[dtype]}', weight_grad.depthwise_weight_grad_kernel,
                      dict(features=element, grad_output=element, partials='*fp32'),
                      dict(BLOCK_M=weight_grad.DEPTHWISE_BLOCK_ROWS, BLOCK_C=weight_grad.DEPTHWISE_BLOCK_CHANNELS)))
    return cases


@in_parent_process   # compiles the kernels themselves, not their interpreted twins
def test_kernels_compile_for_sm80_and_sm90_within_budget():
    """Every kernel config compiles for Ampere and Hopper without a GPU, with no spills or atomics and within its
    budget."""
    from sparsevision.ops.gpu.triton_settings import NUM_STAGES, NUM_WARPS
    over = []
    for name, kernel, pointers, constexprs in aot_cases():
        pointers = dict(pointers, neighbors='*i32')
        signature = {argument: 'constexpr' if argument in constexprs else pointers.get(argument, 'i32')
                     for argument in kernel.arg_names}
        for arch, (register_budget, shared_budget) in RESOURCE_BUDGETS[name].items():
            compiled = compile_for(kernel, signature, constexprs, arch, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
            if (compiled.registers > register_budget or compiled.shared_bytes > shared_budget or compiled.local_bytes
                    or compiled.atomics):
                over.append(f'{name} sm_{arch}: {compiled} (budget {register_budget} registers, {shared_budget} B '
                            'shared)')
    assert not over, '\n'.join(over)
