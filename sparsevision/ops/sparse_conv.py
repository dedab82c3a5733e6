"""Sparse convolution over a kernel map, with autograd.

``weight`` here is ``[K, C_in / groups, C_out]``, of any strides (the layers
pass a view of spconv's ``[C_out, *kernel, C_in / groups]`` memory, which the
kernel packs once per call). The input gradient is the same
convolution run on the inverse map with the transposed weight, the weight
gradient its own op (whose own gradients are sparse convolutions again, so
double backward works); all are deterministic.
"""
import contextlib

import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)
from .conv_algorithms import forced_conv_algorithm, use_conv_algorithm
from .devices import check_same_device

_sparse_conv = torch.ops.sparsevision.sparse_conv.default
_weight_grad = torch.ops.sparsevision.sparse_conv_weight_grad.default


def sparse_conv(features: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                inverse_neighbors: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``out[m] = sum_k features[neighbors[m, k]] @ weight[k]`` within each channel group.

    Args:
        features: ``[N, C_in]``.
        weight: ``[K, C_in / groups, C_out]``, same dtype as ``features``.
        neighbors: ``[M, K]`` int32 kernel map (``-1`` = no input site).
        inverse_neighbors: ``[N, K]`` transposed map (see :func:`~sparsevision.ops.invert_kernel_map`).
        groups: channel groups; ``C_in`` for depthwise.

    Returns:
        ``[M, C_out]`` output features.

    Raises:
        ValueError: on mismatched shapes, channels, dtypes, devices or kernel maps.
    """
    if features.dim() != 2 or weight.dim() != 3:
        raise ValueError(f'sparse_conv: features must be [N, C] and weight [taps, in/groups, out], got '
                         f'{tuple(features.shape)} and {tuple(weight.shape)}')
    if groups < 1 or features.shape[1] != weight.shape[1] * groups or weight.shape[2] % groups:
        raise ValueError(f'sparse_conv: {features.shape[1]} input channels do not match weight {tuple(weight.shape)} '
                         f'with groups={groups}')
    if neighbors.shape[1] != weight.shape[0] or inverse_neighbors.shape != (features.shape[0], weight.shape[0]):
        raise ValueError(f'sparse_conv: kernel maps {tuple(neighbors.shape)} / {tuple(inverse_neighbors.shape)} do '
                         f'not fit {features.shape[0]} inputs and {weight.shape[0]} taps')
    if features.dtype != weight.dtype:
        raise ValueError(f'sparse_conv: features are {features.dtype} but weight is {weight.dtype}')
    check_same_device('sparse_conv', features=features, weight=weight, neighbors=neighbors,
                      inverse_neighbors=inverse_neighbors)
    return _sparse_conv(features, weight, neighbors, inverse_neighbors, groups)


def transpose_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[K, I/g, O]`` -> ``[K, O/g, I]``: the weight that maps output gradients back to inputs."""
    taps, in_per_group, out_channels = weight.shape
    return (weight.reshape(taps, in_per_group, groups, out_channels // groups)
            .permute(0, 3, 2, 1).reshape(taps, out_channels // groups, groups * in_per_group))


@torch.library.register_fake('sparsevision::sparse_conv')
def _sparse_conv_fake(features, weight, neighbors, inverse_neighbors, groups):
    return features.new_empty(neighbors.shape[0], weight.shape[2])


@torch.library.register_fake('sparsevision::sparse_conv_weight_grad')
def _weight_grad_fake(features, grad_output, neighbors, inverse_neighbors, groups):
    return features.new_empty(neighbors.shape[1], features.shape[1] // groups, grad_output.shape[1])


def _setup_context(ctx, inputs, output):
    features, weight, neighbors, inverse_neighbors, groups = inputs
    ctx.save_for_backward(features, weight, neighbors, inverse_neighbors)
    ctx.groups = groups
    ctx.algorithm = forced_conv_algorithm()


def _as_forced_in_forward(ctx):
    """The path the forward was forced onto, for the backward: autograd runs a CUDA backward on a thread of its own,
    where the forward thread's override does not hold."""
    return contextlib.nullcontext() if ctx.algorithm is None else use_conv_algorithm(ctx.algorithm)


def _backward(ctx, grad_output):
    with _as_forced_in_forward(ctx):
        return _input_and_weight_gradients(ctx, grad_output.contiguous())


def _input_and_weight_gradients(ctx, grad_output):
    features, weight, neighbors, inverse_neighbors = ctx.saved_tensors
    grad_features = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_features = _sparse_conv(grad_output, transpose_weight(weight, ctx.groups), inverse_neighbors, neighbors,
                                     ctx.groups)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_gradient(features, grad_output, neighbors, inverse_neighbors, ctx.groups, weight)
    return grad_features, grad_weight, None, None, None


def weight_gradient(features: torch.Tensor, grad_output: torch.Tensor, neighbors: torch.Tensor,
                    inverse_neighbors: torch.Tensor, groups: int, weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s gradient, laid out in memory like ``weight`` when that is out-channel-major.

    The layers pass spconv's ``[out, taps, in]`` parameter as a ``[taps, in, out]`` view. Its gradient is then
    computed transposed, ``[taps, out, in]`` (the same op with the roles of the two maps and of features and output
    gradients swapped), so autograd hands the parameter a gradient whose rows are already contiguous: accumulating
    it costs a row copy instead of an element-wise transpose (about 4 ms per 256 x 256 x 27 layer on one core).
    """
    out_major = (groups == 1 and weight.dim() == 3 and weight.shape[0] > 1 and weight.permute(2, 0, 1).is_contiguous()
                 and features.shape[1] % 16 == 0)   # the transposed problem's outputs then need no zero padding
    if out_major:
        return _weight_grad(grad_output, features, inverse_neighbors, neighbors, 1).transpose(1, 2)
    return _weight_grad(features, grad_output, neighbors, inverse_neighbors, groups)


def _weight_grad_setup_context(ctx, inputs, output):
    features, grad_output, neighbors, inverse_neighbors, groups = inputs
    ctx.save_for_backward(features, grad_output, neighbors, inverse_neighbors)
    ctx.groups = groups
    ctx.algorithm = forced_conv_algorithm()


def _weight_grad_backward(ctx, grad_grad_weight):
    with _as_forced_in_forward(ctx):
        return _weight_grad_derivatives(ctx, grad_grad_weight.contiguous())


def _weight_grad_derivatives(ctx, grad_grad_weight):
    """The weight gradient is bilinear in (features, grad_output): both derivatives are sparse convolutions."""
    features, grad_output, neighbors, inverse_neighbors = ctx.saved_tensors
    grad_features = grad_grad_output = None
    if ctx.needs_input_grad[0]:
        grad_features = _sparse_conv(grad_output, transpose_weight(grad_grad_weight, ctx.groups), inverse_neighbors,
                                     neighbors, ctx.groups)
    if ctx.needs_input_grad[1]:
        grad_grad_output = _sparse_conv(features, grad_grad_weight, neighbors, inverse_neighbors, ctx.groups)
    return grad_features, grad_grad_output, None, None, None


torch.library.register_autograd('sparsevision::sparse_conv', _backward, setup_context=_setup_context)
torch.library.register_autograd('sparsevision::sparse_conv_weight_grad', _weight_grad_backward,
                                setup_context=_weight_grad_setup_context)
