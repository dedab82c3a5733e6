"""The Triton ``spike_sparse_conv`` CUDA kernel (``ops/gpu/spike_conv.py``) against the CPU kernel and reference.

Runs in Triton's interpreter on CPU tensors on every CI run, and on CUDA tensors where a GPU exists.
"""
import pytest
import torch

import sparsevision.ops as ops
from sparsevision.ops import reference
from triton_interpreter import BACKENDS, kernels_on, registered_cuda_kernel

requires_native = pytest.mark.skipif(not ops.extension_info().cpu_kernels, reason='needs the native CPU kernels')
CPU_SPIKE_CONV = torch.ops.sparsevision.spike_sparse_conv.default


@pytest.fixture(scope='module', params=BACKENDS)
def backend(request):
    """``(spike_sparse_conv CUDA kernel, device)``: interpreted on CPU, or compiled on CUDA."""
    module, device = kernels_on(request.param, 'sparsevision.ops.gpu.spike_conv')
    return module.spike_sparse_conv_cuda, device


def make_case(inputs=40, outputs=33, taps=9, in_channels=5, out_channels=20, rate=0.3, max_spikes=1, seed=0,
              absent=0.3):
    """Spikes ``[inputs, in_channels]`` (0..max_spikes), float32 weight, a random map with ``absent`` -1 entries."""
    generator = torch.Generator().manual_seed(seed)
    fired = torch.rand(inputs, in_channels, generator=generator) < rate
    spikes = (fired * torch.randint(1, max_spikes + 1, fired.shape, generator=generator)).float()
    weight = torch.randn(taps, in_channels, out_channels, generator=generator)
    neighbors = torch.randint(0, max(inputs, 1), (outputs, taps), generator=generator, dtype=torch.int32)
    neighbors[torch.rand(outputs, taps, generator=generator) < absent] = -1
    if inputs == 0:
        neighbors.fill_(-1)
    return spikes, weight, neighbors, ops.invert_kernel_map(neighbors, inputs)


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
    spikes, weight, neighbors, inverse = make_case(taps=27, in_channels=8)
    weight = weight.to(dtype).float()   # representable in dtype, so only the sum's rounding differs
    expected = CPU_SPIKE_CONV(spikes, weight, neighbors, inverse).to(dtype)
    assert torch.equal(run(*backend, (spikes, weight, neighbors, inverse), dtype), expected)


@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_multi_spikes_match_the_reference(backend, dtype, tolerance):
    case = make_case(max_spikes=4, rate=0.6)
    assert case[0].max() == 4
    expected = reference.spike_sparse_conv(*(t.to(dtype) if t.is_floating_point() else t for t in case))
    torch.testing.assert_close(run(*backend, case, dtype), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('shape', [dict(inputs=0), dict(outputs=0), dict(outputs=1), dict(out_channels=1),
                                   dict(absent=1.0), dict(rate=0.0), dict(rate=1.0)], ids=str)
def test_edge_shapes_match_the_reference(backend, shape):
    case = make_case(**shape)
    torch.testing.assert_close(run(*backend, case), reference.spike_sparse_conv(*case), rtol=1e-5, atol=1e-5)


def test_out_of_range_map_entries_add_nothing(backend):
    spikes, weight, neighbors, inverse = make_case()
    corrupted = neighbors.clone()
    corrupted[::3, 1] = spikes.shape[0]
    corrupted[1::3, 2] = 2**31 - 1
    corrupted[2::3, 4] = -7
    cleaned = torch.where((corrupted >= 0) & (corrupted < spikes.shape[0]), corrupted, -1)
    expected = reference.spike_sparse_conv(spikes, weight, cleaned, ops.invert_kernel_map(cleaned, spikes.shape[0]))
    torch.testing.assert_close(run(*backend, (spikes, weight, corrupted, inverse)), expected, rtol=1e-5, atol=1e-5)


def test_runs_are_bitwise_equal(backend):
    case = make_case(max_spikes=3, out_channels=70)
    assert torch.equal(run(*backend, case, torch.bfloat16), run(*backend, case, torch.bfloat16))


@pytest.mark.parametrize('arguments, message', [
    (dict(weight=torch.zeros(9, 4, 20)), 'do not fit'),
    (dict(weight=torch.zeros(9, 5, 20, dtype=torch.float64)), 'share a dtype'),
    (dict(neighbors=torch.zeros(33, 9, dtype=torch.int64)), 'int32'),
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
