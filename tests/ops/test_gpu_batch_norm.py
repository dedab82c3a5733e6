"""The Triton ``row_batch_norm`` / ``row_batch_norm_backward`` CUDA kernels (``ops/gpu/batch_norm.py``) against the
CPU kernels and the float64 reference.

Runs in Triton's interpreter on CPU tensors on every CI run, and on CUDA tensors where a GPU exists.
"""
import pytest
import torch
from triton_interpreter import BACKENDS, kernels_on, registered_cuda_kernel

import sparsevision.ops as ops
from sparsevision.ops import reference

requires_native = pytest.mark.skipif(not ops.extension_info().cpu_kernels, reason='needs the native CPU kernels')
CPU_FORWARD = torch.ops.sparsevision.row_batch_norm.default
CPU_BACKWARD = torch.ops.sparsevision.row_batch_norm_backward.default
EPS = 1e-3
# about two units in the last place of each dtype
TOLERANCES = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
HALF_AND_SINGLE = [torch.float32, torch.float16, torch.bfloat16]
FUSIONS = {'plain': {}, 'affine': dict(affine=True), 'relu': dict(relu=True), 'residual': dict(residual=True),
           'affine_residual_relu': dict(affine=True, residual=True, relu=True)}


@pytest.fixture(scope='module', params=BACKENDS)
def backend(request):
    """``(kernel module, device)``: interpreted on CPU, or compiled on CUDA."""
    return kernels_on(request.param, 'sparsevision.ops.gpu.batch_norm')


def make_case(count=300, channels=40, dtype=torch.float32, affine=False, residual=False, relu=False, seed=0,
              offset=2.0, spread=3.0):
    """``(rows, weight, bias, relu, residual)`` on the CPU; weight and bias stay float32 (as a module's are)."""
    generator = torch.Generator().manual_seed(seed)
    rows = (torch.randn(count, channels, generator=generator) * spread + offset).to(dtype)
    weight = torch.randn(channels, generator=generator) if affine else None
    bias = torch.randn(channels, generator=generator) if affine else None
    added = torch.randn(count, channels, generator=generator).to(dtype) if residual else None
    return rows, weight, bias, relu, added


def on(device, tensors):
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors]


def forward(backend, case):
    module, device = backend
    rows, weight, bias, relu, residual = on(device, case)
    return [t.cpu() for t in module.row_batch_norm_cuda(rows, weight, bias, EPS, relu, residual)]


def backward(backend, grad_out, rows, mean, var, weight, relu_out):
    module, device = backend
    arguments = on(device, (grad_out, rows, mean, var, weight))
    relu_out = None if relu_out is None else relu_out.to(device)
    return [t.cpu() for t in module.row_batch_norm_backward_cuda(*arguments, EPS, relu_out)]


def assert_close(actual, expected, dtype):
    for got, want in zip(actual, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=TOLERANCES[dtype], atol=TOLERANCES[dtype], equal_nan=True)


def double(tensor):
    return None if tensor is None else tensor.double()


def reference_forward(case):
    """The float64 reference rounded to the rows' dtype, then the residual added in that dtype and ReLU applied,
    as separate torch ops would (the fused kernels' contract)."""
    rows, weight, bias, relu, residual = case
    exact = reference.row_batch_norm(rows.double(), double(weight), double(bias), EPS)
    out, mean, var = (t.to(rows.dtype) for t in exact)
    out = out if residual is None else out + residual
    return [torch.relu(out) if relu else out, mean, var]


def reference_backward(grad_out, rows, mean, var, weight, relu_out):
    grads = reference.row_batch_norm_backward(grad_out.double(), rows.double(), mean.double(), var.double(),
                                              double(weight), EPS, double(relu_out))
    return [g.to(rows.dtype) for g in grads]


@pytest.mark.parametrize('dtype', HALF_AND_SINGLE)
@pytest.mark.parametrize('fusion', FUSIONS)
def test_forward_matches_the_reference(backend, dtype, fusion):
    case = make_case(dtype=dtype, **FUSIONS[fusion])
    assert_close(forward(backend, case), reference_forward(case), dtype)


@requires_native
@pytest.mark.parametrize('dtype', HALF_AND_SINGLE)
@pytest.mark.parametrize('fusion', ['plain', 'affine_residual_relu'])
def test_forward_matches_the_cpu_kernel(backend, dtype, fusion):
    rows, weight, bias, relu, residual = case = make_case(dtype=dtype, **FUSIONS[fusion])
    assert_close(forward(backend, case), CPU_FORWARD(rows, weight, bias, EPS, relu, residual), dtype)


@pytest.mark.parametrize('dtype', HALF_AND_SINGLE)
@pytest.mark.parametrize('affine, relu', [(False, False), (True, True)])
def test_backward_matches_the_reference_and_cpu_kernel(backend, dtype, affine, relu):
    rows, weight, bias, relu, residual = make_case(dtype=dtype, affine=affine, relu=relu)
    out, mean, var = forward(backend, (rows, weight, bias, relu, residual))
    grad_out = torch.randn(rows.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    relu_out = out if relu else None
    grads = backward(backend, grad_out, rows, mean, var, weight, relu_out)
    assert_close(grads, reference_backward(grad_out, rows, mean, var, weight, relu_out), dtype)
    if ops.extension_info().cpu_kernels:
        assert_close(grads, CPU_BACKWARD(grad_out, rows, mean, var, weight, EPS, relu_out), dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_forward_and_backward_give_the_autograd_gradients(backend, dtype):
    rows, weight, bias, _, _ = make_case(dtype=dtype, affine=True, relu=True)
    out, mean, var = forward(backend, (rows, weight.to(dtype), bias.to(dtype), True, None))
    grad_out = torch.randn(rows.shape, dtype=dtype)
    grads = backward(backend, grad_out, rows, mean, var, weight.to(dtype), out)
    inputs = [t.double().requires_grad_() for t in (rows, weight, bias)]
    autograd = torch.autograd.grad(reference.row_batch_norm(*inputs, EPS, True)[0], inputs, grad_out.double())
    assert_close(grads, [g.to(dtype) for g in autograd], torch.float32)


@pytest.mark.parametrize('case', [
    dict(count=1), dict(count=0), dict(channels=1), dict(channels=70), dict(count=257, channels=3),
    dict(offset=1e4, spread=1.0), dict(spread=0.0), dict(dtype=torch.float64, affine=True, residual=True, relu=True),
], ids=str)
def test_adversarial_shapes_and_values(backend, case):
    dtype = case.get('dtype', torch.float32)
    rows, weight, bias, relu, residual = arguments = make_case(**case)
    out = forward(backend, arguments)
    assert_close(out, reference_forward(arguments), dtype)
    grad_out = torch.randn(rows.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    relu_out = out[0] if relu else None
    grads = backward(backend, grad_out, rows, out[1], out[2], weight, relu_out)
    if rows.shape[0]:   # without rows the reference's grad_weight is 0, the kernels' 0 * NaN
        assert_close(grads, reference_backward(grad_out, rows, out[1], out[2], weight, relu_out), dtype)
    if ops.extension_info().cpu_kernels:
        assert_close(out, CPU_FORWARD(rows, weight, bias, EPS, relu, residual), dtype)
        assert_close(grads, CPU_BACKWARD(grad_out, rows, out[1], out[2], weight, EPS, relu_out), dtype)


def test_strided_inputs(backend):
    rows, weight, bias, relu, residual = make_case(channels=80, affine=True, residual=True)
    strided = (rows[:, ::2], weight[::2], bias[::2], relu, residual[:, ::2])
    out = forward(backend, strided)
    assert_close(out, reference_forward([t.contiguous() if isinstance(t, torch.Tensor) else t for t in strided]),
                 torch.float32)
    grad_out = torch.randn(rows.shape)[:, ::2]
    strided_mean = torch.stack([out[1], out[1]], dim=1)[:, 0]
    assert_close(backward(backend, grad_out, strided[0], strided_mean, out[2], strided[1], None),
                 reference_backward(grad_out, strided[0], out[1], out[2], strided[1], None), torch.float32)


def test_many_chunks_combine_in_blocks(backend, monkeypatch):
    module, _ = backend
    monkeypatch.setattr(module, 'CHUNK_ROWS', 32)
    monkeypatch.setattr(module, 'STEP_ROWS', 16)
    monkeypatch.setattr(module, 'BLOCK_CHUNKS', 2)
    case = make_case(count=333, channels=20, offset=50.0, affine=True)   # 11 chunks, 6 blocks of partials
    out = forward(backend, case)
    assert_close(out, reference_forward(case), torch.float32)
    grad_out = torch.randn(case[0].shape)
    assert_close(backward(backend, grad_out, case[0], out[1], out[2], case[1], None),
                 reference_backward(grad_out, case[0], out[1], out[2], case[1], None), torch.float32)


def test_fused_relu_keeps_nan_and_masks_nan_gradients(backend):
    rows, weight, bias, relu, residual = make_case(relu=True)
    rows[3, 5] = float('nan')
    out, mean, var = forward(backend, (rows, weight, bias, relu, residual))
    assert out[:, 5].isnan().all() and not out[:, :5].isnan().any()
    relu_out = out.nan_to_num(0.0)   # NaN output: no gradient passes
    grad_out = torch.randn(rows.shape)
    grad_out[relu_out <= 0] = float('nan')
    rows = rows.nan_to_num(0.0)
    grads = backward(backend, grad_out, rows, mean.nan_to_num(0.0), var.nan_to_num(1.0), weight, relu_out)
    assert not any(g.isnan().any() for g in grads)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_runs_are_bitwise_equal(backend, dtype):
    case = make_case(dtype=dtype, affine=True, residual=True, relu=True)
    first, second = forward(backend, case), forward(backend, case)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    grad_out = torch.randn(case[0].shape).to(dtype)
    first = backward(backend, grad_out, case[0], second[1], second[2], case[1], second[0])
    second = backward(backend, grad_out, case[0], second[1], second[2], case[1], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize('arguments, message', [
    (dict(rows=torch.zeros(4)), r'\[N, C\]'),
    (dict(weight=torch.zeros(3)), 'weight must be'),
    (dict(bias=torch.zeros(3)), 'bias must be'),
    (dict(residual=torch.zeros(4, 5, dtype=torch.float64)), 'residual must be'),
])
def test_bad_arguments_raise(backend, arguments, message):
    module, _ = backend
    call = {'rows': torch.zeros(4, 5), 'weight': None, 'bias': None, 'eps': EPS, 'relu': False, 'residual': None,
            **arguments}
    with pytest.raises(ValueError, match=message):
        module.row_batch_norm_cuda(**call)


def test_registered_as_the_cuda_kernels():
    from sparsevision.ops.gpu import batch_norm
    assert registered_cuda_kernel('row_batch_norm') is batch_norm.row_batch_norm_cuda
    assert registered_cuda_kernel('row_batch_norm_backward') is batch_norm.row_batch_norm_backward_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_batch_norm_rows_trains_like_the_cpu(dtype):
    rows, weight, bias, _, residual = make_case(dtype=dtype, affine=True, residual=True)
    results = []
    for device in ('cpu', 'cuda'):
        inputs = [t.to(device).requires_grad_() for t in (rows, weight, bias, residual)]
        out, mean, var = ops.batch_norm_rows(inputs[0], inputs[1], inputs[2], EPS, True, inputs[3])
        out.backward(torch.ones_like(out))
        results.append([t.detach().cpu() for t in (out, mean, var)] + [t.grad.cpu() for t in inputs])
    for got, want in zip(*reversed(results)):
        torch.testing.assert_close(got, want, rtol=TOLERANCES[dtype], atol=TOLERANCES[dtype])
