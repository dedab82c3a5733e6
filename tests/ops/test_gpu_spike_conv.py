"""The Triton ``spike_sparse_conv`` CUDA kernel (``ops/gpu/spike_conv.py``) against the CPU kernel and reference.

Runs in Triton's interpreter on CPU tensors on every CI run, and on CUDA tensors where a GPU exists.
"""
import pytest
import torch

import sparsevision.ops as ops
from sparsevision.ops import map_validation, reference
from sparsevision.ops.coordinates import keys_to_coordinates
from triton_interpreter import BACKENDS, kernels_on, registered_cuda_kernel

requires_native = pytest.mark.skipif(not ops.extension_info().cpu_kernels, reason='needs the native CPU kernels')
CPU_SPIKE_CONV = torch.ops.sparsevision.spike_sparse_conv.default


@pytest.fixture(scope='module', params=BACKENDS)
def backend(request):
    """``(spike_sparse_conv CUDA kernel, device)``: interpreted on CPU, or compiled on CUDA."""
    module, device = kernels_on(request.param, 'sparsevision.ops.gpu.spike_conv')
    return module.spike_sparse_conv_cuda, device


def make_case(sites=40, outputs=None, taps=9, in_channels=5, out_channels=20, rate=0.3, max_spikes=1, seed=0,
              absent=0.0):
    """Spikes ``[sites, in_channels]`` (0..max_spikes), float32 weight, and the submanifold map of ``sites`` random
    sites of an 8 x 8 image (3 x 3 taps, or the first ``taps`` of them), its first ``outputs`` rows, with a share
    ``absent`` of its entries set to -1."""
    generator = torch.Generator().manual_seed(seed)
    indices = keys_to_coordinates(torch.randperm(64, generator=generator)[:sites], [8, 8])
    neighbors = ops.submanifold_kernel_map(indices, [8, 8], 3)[:outputs, :taps].contiguous()
    neighbors[torch.rand(neighbors.shape, generator=generator) < absent] = -1
    fired = torch.rand(sites, in_channels, generator=generator) < rate
    spikes = (fired * torch.randint(1, max_spikes + 1, fired.shape, generator=generator)).float()
    weight = torch.randn(taps, in_channels, out_channels, generator=generator)
    return spikes, weight, neighbors, ops.invert_kernel_map(neighbors, sites)


def run(kernel, device, case, dtype=torch.float32):
    spikes, weight, neighbors, inverse = case
    out = kernel(spikes.to(device, dtype), weight.to(device, dtype), neighbors.to(device), inverse.to(device))
    assert out.dtype == dtype and out.shape == (neighbors.shape[0], weight.shape[2])
    return out.cpu()


@requires_native
@pytest.mark.parametrize('out_channels', [20, 64, 70])
def test_binary_spikes_equal_the_cpu_kernel_bitwise(backend, out_channels):
    case = make_case(out_channels=out_channels)
    assert torch.equal(run(*backend, case), CPU_SPIKE_CONV(*case))


@requires_native
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    spikes, weight, neighbors, inverse = make_case(in_channels=12)
    weight = weight.to(dtype).float()   # representable in dtype, so only the sum's rounding differs
    exact = CPU_SPIKE_CONV(spikes, weight, neighbors, inverse)
    out = run(*backend, (spikes, weight, neighbors, inverse), dtype)
    if dtype == torch.bfloat16 and backend[1].type == 'cpu':
        # Triton's interpreter truncates float32 -> bfloat16 (GPUs round to nearest even): toward zero, within 1 ulp
        assert torch.equal(out, truncated_to_bfloat16(exact))
    else:
        assert torch.equal(out, exact.to(dtype))


def truncated_to_bfloat16(values: torch.Tensor) -> torch.Tensor:
    return (values.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_multi_spikes_match_the_reference(backend, dtype, tolerance):
    case = make_case(max_spikes=4, rate=0.6)
    assert case[0].max() == 4
    expected = reference.spike_sparse_conv(*(t.to(dtype) if t.is_floating_point() else t for t in case))
    torch.testing.assert_close(run(*backend, case, dtype), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('shape', [dict(sites=0), dict(outputs=0), dict(outputs=1), dict(out_channels=1),
                                   dict(absent=1.0), dict(absent=0.5), dict(rate=0.0), dict(rate=1.0), dict(taps=1)],
                         ids=str)
def test_edge_shapes_match_the_reference(backend, shape):
    case = make_case(**shape)
    torch.testing.assert_close(run(*backend, case), reference.spike_sparse_conv(*case), rtol=1e-5, atol=1e-5)


def test_outputs_without_inputs_are_zero(backend):
    spikes, weight, _, _ = make_case(sites=0)
    neighbors = torch.full((5, 9), -1, dtype=torch.int32)
    out = run(*backend, (spikes, weight, neighbors, ops.invert_kernel_map(neighbors, 0)))
    assert torch.equal(out, torch.zeros(5, 20))


def test_out_of_range_map_entries_are_refused_and_never_read(backend):
    spikes, weight, neighbors, inverse = make_case()
    corrupted = neighbors.clone()   # the kernel reads no inverse map, so the valid one is passed
    corrupted[::3, 1] = spikes.shape[0]
    corrupted[1::3, 2] = 2**31 - 1
    corrupted[2::3, 4] = -7
    with pytest.raises(ValueError, match='kernel map entries'):
        run(*backend, (spikes, weight, corrupted, inverse))
    # Even a map wrongly recorded as valid cannot make the kernel read out of bounds: it reads such entries as absent.
    map_validation.mark_valid(corrupted, spikes.shape[0])
    cleaned = torch.where((corrupted >= 0) & (corrupted < spikes.shape[0]), corrupted, -1)
    expected = reference.spike_sparse_conv(spikes, weight, cleaned, inverse)
    torch.testing.assert_close(run(*backend, (spikes, weight, corrupted, inverse)), expected, rtol=1e-5, atol=1e-5)


def test_runs_are_bitwise_equal(backend):
    case = make_case(max_spikes=3, out_channels=70)
    assert torch.equal(run(*backend, case, torch.bfloat16), run(*backend, case, torch.bfloat16))


@pytest.mark.parametrize('arguments, message', [
    (dict(weight=torch.zeros(9, 4, 20)), 'do not fit'),
    (dict(weight=torch.zeros(9, 5, 20, dtype=torch.float64)), 'share a dtype'),
    (dict(neighbors=torch.zeros(40, 9, dtype=torch.int64)), 'int32'),
])
def test_bad_arguments_raise(backend, arguments, message):
    kernel, _ = backend
    spikes, weight, neighbors, inverse = make_case()
    case = {'spikes': spikes, 'weight': weight, 'neighbors': neighbors, 'inverse_neighbors': inverse, **arguments}
    with pytest.raises(ValueError, match=message):
        kernel(**case)


def test_registered_as_the_cuda_kernel():
    from sparsevision.ops.gpu.spike_conv import spike_sparse_conv_cuda
    assert registered_cuda_kernel('spike_sparse_conv') is spike_sparse_conv_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_op_runs_the_kernel_with_sparse_conv_gradients(dtype):
    spikes, weight, neighbors, inverse = (t.cuda() for t in make_case(max_spikes=2))
    spikes, weight = spikes.to(dtype), weight.to(dtype).requires_grad_()
    out = ops.spike_sparse_conv(spikes.requires_grad_(), weight, neighbors, inverse)
    from sparsevision.ops.gpu.spike_conv import spike_sparse_conv_cuda
    assert torch.equal(out, spike_sparse_conv_cuda(spikes, weight, neighbors, inverse))
    grad = torch.randn_like(out)
    out.backward(grad)
    cpu = [t.detach().cpu().double().requires_grad_() for t in (spikes, weight)]
    reference.spike_sparse_conv(cpu[0], cpu[1], neighbors.cpu(), inverse.cpu()).backward(grad.cpu().double())
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for tensor, expected in zip((spikes, weight), cpu):
        torch.testing.assert_close(tensor.grad.cpu().double(), expected.grad, rtol=tolerance, atol=tolerance)
