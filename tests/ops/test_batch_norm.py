"""row_batch_norm and its backward against the reference: random, adversarial, gradients, opcheck, threads."""
import pytest
import torch

import sparsevision.ops as ops
from sparsevision.ops import reference

BATCH_NORM = torch.ops.sparsevision.row_batch_norm.default
BATCH_NORM_BACKWARD = torch.ops.sparsevision.row_batch_norm_backward.default


def make_rows(count, channels, dtype=torch.float64, seed=0, offset=0.0, spread=1.0):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(count, channels, generator=generator, dtype=torch.float64) * spread + offset
    weight = torch.randn(channels, generator=generator, dtype=torch.float64)
    bias = torch.randn(channels, generator=generator, dtype=torch.float64)
    return rows.to(dtype), weight.to(dtype), bias.to(dtype)


def assert_matches_reference(rows, weight, bias, eps=1e-3, tolerance=None):
    tolerance = tolerance or (dict(rtol=1e-12, atol=1e-12) if rows.dtype == torch.float64 else
                              dict(rtol=1e-5, atol=1e-5))
    out = BATCH_NORM(rows, weight, bias, eps)
    expected = reference.row_batch_norm(rows.double(), None if weight is None else weight.double(),
                                        None if bias is None else bias.double(), eps)
    for ours, theirs in zip(out, expected):
        torch.testing.assert_close(ours.double(), theirs, **tolerance)
    grad_out = torch.randn_like(rows)
    grads = BATCH_NORM_BACKWARD(grad_out, rows, out[1], out[2], weight, eps)
    expected = reference.row_batch_norm_backward(grad_out.double(), rows.double(), out[1].double(), out[2].double(),
                                                 None if weight is None else weight.double(), eps)
    for ours, theirs in zip(grads, expected):
        torch.testing.assert_close(ours.double(), theirs, **tolerance)


@pytest.mark.parametrize('count, channels', [(2, 1), (5, 3), (300, 16), (1000, 96), (257, 7)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('affine', [True, False])
def test_random_against_reference(count, channels, dtype, affine):
    rows, weight, bias = make_rows(count, channels, dtype, seed=count + channels)
    assert_matches_reference(rows, weight if affine else None, bias if affine else None)


@pytest.mark.parametrize('case', ['single_row', 'constant_column', 'huge_offset', 'huge_spread', 'many_rows'])
def test_adversarial(case):
    if case == 'single_row':
        rows, weight, bias = make_rows(1, 4)
    elif case == 'constant_column':
        rows, weight, bias = make_rows(50, 3)
        rows[:, 1] = 7.0
    elif case == 'huge_offset':   # float32: the mean must be removed before squaring
        rows, weight, bias = make_rows(2000, 8, torch.float32, offset=1e4, spread=1.0)
    elif case == 'huge_spread':
        rows, weight, bias = make_rows(500, 8, torch.float32, spread=1e6)
    else:
        rows, weight, bias = make_rows(40_000, 5, torch.float32)
    tolerance = dict(rtol=2e-4, atol=2e-4) if rows.dtype == torch.float32 else None
    assert_matches_reference(rows, weight, bias, tolerance=tolerance)
    if case == 'huge_offset':   # normalised values are still accurate
        out, _, _ = BATCH_NORM(rows, None, None, 1e-5)
        expected, _, _ = reference.row_batch_norm(rows.double(), None, None, 1e-5)
        assert (out.double() - expected).abs().max() < 5e-3


def test_empty_channels():
    out, mean, var = BATCH_NORM(torch.zeros(4, 0), None, None, 1e-5)
    assert out.shape == (4, 0) and mean.shape == (0,) and var.shape == (0,)


def test_gradcheck_float64():
    rows, weight, bias = make_rows(9, 3)
    inputs = (rows.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, w, b: ops.batch_norm_rows(x, w, b, 1e-3)[0], inputs)
    assert torch.autograd.gradcheck(lambda x: ops.batch_norm_rows(x, None, None, 1e-3)[0], (rows,))


def test_opcheck():
    rows, weight, bias = make_rows(20, 4)
    torch.library.opcheck(BATCH_NORM, (rows.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), 1e-3))
    out, mean, var = BATCH_NORM(rows.detach(), weight.detach(), bias.detach(), 1e-3)
    torch.library.opcheck(BATCH_NORM_BACKWARD, (torch.randn_like(out), rows.detach(), mean, var, weight.detach(), 1e-3))


def at_thread_counts(call, counts=(1, 2)) -> list:
    """``call()``'s result at each thread count in turn."""
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in counts:
            torch.set_num_threads(threads)
            results.append(call())
        return results
    finally:
        torch.set_num_threads(previous)


def test_bitwise_identical_across_threads_and_runs():
    rows, weight, bias = make_rows(5000, 48, torch.float32)
    grad_out = torch.randn_like(rows)

    def forward_and_backward():
        out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3)
        return out, mean, var, *BATCH_NORM_BACKWARD(grad_out, rows, mean, var, weight, 1e-3)
    results = at_thread_counts(forward_and_backward, (1, 2, 2))
    assert all(torch.equal(a, b) for result in results[1:] for a, b in zip(result, results[0]))


@pytest.mark.parametrize('arguments, message', [
    ((torch.zeros(4), None, None), r'\[N >= 1, C\]'),
    ((torch.zeros(0, 3), None, None), r'\[N >= 1, C\]'),
    ((torch.zeros(4, 3), torch.ones(2), None), r'weight must be \[3\]'),
    ((torch.zeros(4, 3), None, torch.ones(3, 1)), r'bias must be \[3\]'),
])
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        ops.batch_norm_rows(*arguments, 1e-5)


def test_native_op_rejects_bad_shapes():
    with pytest.raises(ValueError, match='weight must be'):
        BATCH_NORM(torch.zeros(4, 3), torch.ones(2), None, 1e-5)
    with pytest.raises(ValueError, match='grad_out must be'):
        BATCH_NORM_BACKWARD(torch.zeros(3, 3), torch.zeros(4, 3), torch.zeros(3), torch.ones(3), None, 1e-5)


@pytest.mark.parametrize('count, channels', [(2, 1), (300, 16), (1000, 96), (257, 7)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_fused_relu_is_relu_of_the_norm(count, channels, dtype):
    """relu=True gives, bitwise, torch.relu of the plain output, and its backward the plain backward of the gradient
    masked where that output is not positive; both match the reference."""
    rows, weight, bias = make_rows(count, channels, dtype, seed=count)
    out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3, True)
    plain, _, _ = BATCH_NORM(rows, weight, bias, 1e-3)
    assert torch.equal(out, torch.relu(plain)) and (out == 0).any()
    grad_out = torch.randn_like(rows)
    fused = BATCH_NORM_BACKWARD(grad_out, rows, mean, var, weight, 1e-3, out)
    masked = torch.where(out > 0, grad_out, torch.zeros_like(grad_out))
    assert all(torch.equal(a, b) for a, b in zip(fused, BATCH_NORM_BACKWARD(masked, rows, mean, var, weight, 1e-3)))
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    expected = reference.row_batch_norm(rows.double(), weight.double(), bias.double(), 1e-3, True)
    torch.testing.assert_close(out.double(), expected[0], **tolerance)
    expected = reference.row_batch_norm_backward(grad_out.double(), rows.double(), mean.double(), var.double(),
                                                 weight.double(), 1e-3, out.double())
    for ours, theirs in zip(fused, expected):
        torch.testing.assert_close(ours.double(), theirs, **tolerance)


def test_fused_relu_keeps_nan_and_masks_nan_gradients():
    rows, weight, bias = make_rows(50, 3, torch.float32)
    rows[4, 1] = float('nan')
    out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3, True)
    assert torch.isnan(out[:, 1]).all() and not torch.isnan(out[:, [0, 2]]).any()   # NaN spreads through its column
    rows, weight, bias = make_rows(50, 3, torch.float32)
    out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3, True)
    grad_out = torch.randn_like(rows)
    grad_out[out == 0] = float('nan')   # where the ReLU was closed, a NaN gradient does not pass
    assert all(torch.isfinite(grad).all() for grad in BATCH_NORM_BACKWARD(grad_out, rows, mean, var, weight, 1e-3, out))


def test_fused_relu_gradcheck_opcheck_and_threads():
    rows, weight, bias = make_rows(9, 3)
    inputs = (rows.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, w, b: ops.batch_norm_rows(x, w, b, 1e-3, relu=True)[0], inputs)
    torch.library.opcheck(BATCH_NORM, (*inputs, 1e-3, True))
    out, mean, var = BATCH_NORM(rows.detach(), weight.detach(), bias.detach(), 1e-3, True)
    torch.library.opcheck(BATCH_NORM_BACKWARD, (torch.randn_like(out), rows.detach(), mean, var, weight.detach(), 1e-3,
                                                out))
    rows, weight, bias = make_rows(5000, 48, torch.float32)
    grad_out = torch.randn_like(rows)

    def forward_and_backward():
        out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3, True)
        return out, *BATCH_NORM_BACKWARD(grad_out, rows, mean, var, weight, 1e-3, out)
    results = at_thread_counts(forward_and_backward)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3, True)
    with pytest.raises(ValueError, match='relu_out must be'):
        BATCH_NORM_BACKWARD(grad_out, rows, mean, var, weight, 1e-3, out[:10])


@pytest.mark.parametrize('count, channels', [(2, 1), (300, 16), (1000, 96), (257, 7)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('relu', [True, False])
def test_fused_residual_is_the_add_of_the_norm(count, channels, dtype, relu):
    """A residual block's tail in one pass: relu(norm + residual) equals, bitwise, the plain output plus the residual
    (a torch add) then torch.relu; its gradients equal autograd's through the three steps; it matches the reference."""
    rows, weight, bias = make_rows(count, channels, dtype, seed=count)
    residual = torch.randn(count, channels, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    out, mean, var = BATCH_NORM(rows, weight, bias, 1e-3, relu, residual)
    plain, plain_mean, plain_var = BATCH_NORM(rows, weight, bias, 1e-3)
    expected = plain + residual
    assert torch.equal(out, torch.relu(expected) if relu else expected)
    assert torch.equal(mean, plain_mean) and torch.equal(var, plain_var)
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(out.double(), reference.row_batch_norm(rows.double(), weight.double(), bias.double(),
                                                                      1e-3, relu, residual.double())[0], **tolerance)
    grad_out = torch.randn_like(rows)
    leaves = [tensor.clone().requires_grad_() for tensor in (rows, weight, bias, residual)]
    fused = ops.batch_norm_rows(*leaves[:3], 1e-3, relu, leaves[3])[0]
    fused_grads = torch.autograd.grad(fused, leaves, grad_out)
    leaves = [tensor.clone().requires_grad_() for tensor in (rows, weight, bias, residual)]
    stepwise = ops.batch_norm_rows(*leaves[:3], 1e-3)[0] + leaves[3]
    stepwise = torch.relu(stepwise) if relu else stepwise
    assert all(torch.equal(a, b) for a, b in zip(fused_grads, torch.autograd.grad(stepwise, leaves, grad_out)))


def test_fused_residual_gradcheck_opcheck_threads_and_bad_residuals():
    rows, weight, bias = make_rows(9, 3)
    residual = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    inputs = (rows.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), residual)
    for relu in (True, False):
        assert torch.autograd.gradcheck(lambda x, w, b, r: ops.batch_norm_rows(x, w, b, 1e-3, relu, r)[0], inputs)
        torch.library.opcheck(BATCH_NORM, (*inputs[:3], 1e-3, relu, residual))
    rows, weight, bias = make_rows(5000, 48, torch.float32)
    residual = torch.randn_like(rows)
    results = at_thread_counts(lambda: BATCH_NORM(rows, weight, bias, 1e-3, True, residual))
    assert all(torch.equal(a, b) for a, b in zip(*results))
    for bad in (residual[:10], residual.double(), residual[:, :3]):
        with pytest.raises(ValueError, match='residual must be'):
            ops.batch_norm_rows(rows, weight, bias, 1e-3, True, bad)
        with pytest.raises(ValueError, match='residual must be'):
            BATCH_NORM(rows, weight, bias, 1e-3, True, bad)
