"""Neighbourhood attention against a brute-force reading of its published definition (NAT, DiNAT, causal NA; the
window rules of NATTEN <= 0.17 with relative positional bias), the NATTEN-named modules, and bad arguments."""
import itertools
import math

import pytest
import torch

from sparsevision.models.layers import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from sparsevision.ops import na1d, na2d, na3d


def window_along_axis(position, length, kernel, dilation, causal):
    """The key positions of ``position``'s window and their bias-table offsets, from the definition: the query's
    dilation group, the ``kernel`` members nearest to it, shifted inward at the borders (or the ones up to it)."""
    group = list(range(position % dilation, length, dilation))
    step = group.index(position)
    if causal:
        members = list(range(max(step - kernel + 1, 0), step + 1))
    else:
        start = min(max(step - kernel // 2, 0), len(group) - kernel)
        members = list(range(start, start + kernel))
    return [group[member] for member in members], [member - step + kernel - 1 for member in members]


def brute_force(query, key, value, kernel, dilation, causal, rpb, scale):
    """NA by loops: every query's window, its scores (plus the bias), a softmax, the weighted values."""
    batch, *grid, heads, _ = query.shape
    out = torch.zeros(*query.shape[:-1], value.shape[-1], dtype=torch.float64)
    for b, site in itertools.product(range(batch), itertools.product(*map(range, grid))):
        windows = [window_along_axis(*arguments) for arguments in zip(site, grid, kernel, dilation, causal)]
        keys = list(itertools.product(*(positions for positions, _ in windows)))
        offsets = list(itertools.product(*(axis_offsets for _, axis_offsets in windows)))
        for h in range(heads):
            scores = torch.stack([query[(b, *site, h)].double() @ key[(b, *other, h)].double() * scale
                                  for other in keys])
            if rpb is not None:
                scores = scores + torch.stack([rpb[(h, *offset)].double() for offset in offsets])
            weights = scores.softmax(0)
            out[(b, *site, h)] = sum(w * value[(b, *other, h)].double() for w, other in zip(weights, keys))
    return out


CASES = [   # (grid, kernel, dilation, causal, with rpb)
    ((9,), (3,), (1,), (False,), True),
    ((11,), (5,), (2,), (False,), True),
    ((10,), (3,), (3,), (False,), False),
    ((8,), (3,), (2,), (True,), False),
    ((7, 6), (3, 5), (1, 1), (False, False), True),
    ((9, 8), (3, 3), (2, 2), (False, False), True),
    ((6, 7), (3, 3), (1, 2), (True, False), False),
    ((4, 5, 6), (3, 3, 3), (1, 1, 2), (False, False, False), True),
    ((5, 5, 5), (5, 5, 5), (1, 1, 1), (False, False, False), False),   # the window is the whole grid
]
FUNCTIONS = {1: na1d, 2: na2d, 3: na3d}


@pytest.mark.parametrize('grid, kernel, dilation, causal, with_rpb', CASES)
def test_equals_the_definition(grid, kernel, dilation, causal, with_rpb):
    generator = torch.Generator().manual_seed(sum(grid))
    query, key, value = (torch.randn(2, *grid, 2, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, *(2 * k - 1 for k in kernel), generator=generator, dtype=torch.float64) if with_rpb else None
    out = FUNCTIONS[len(grid)](query, key, value, kernel, dilation, causal, rpb, scale=0.6)
    torch.testing.assert_close(out, brute_force(query, key, value, kernel, dilation, causal, rpb, 0.6),
                               rtol=1e-10, atol=1e-10)


def test_a_window_as_large_as_the_grid_is_self_attention():
    query, key, value = (torch.randn(1, 5, 7, 3, 8) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.reshape(1, 35, 3, 8).transpose(1, 2)
                                                               for t in (query, key, value)))
    torch.testing.assert_close(na2d(query, key, value, (5, 7)), dense.transpose(1, 2).reshape(1, 5, 7, 3, 8),
                               rtol=1e-5, atol=1e-6)


def test_gradients_reach_inputs_and_bias():
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(1, 6, 7, 2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
               for _ in range(3)]
    rpb = torch.randn(2, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, b: na2d(q, k, v, 3, 2, rpb=b), (*tensors, rpb))


@pytest.mark.parametrize('module, grid', [(NeighborhoodAttention1D, (10,)), (NeighborhoodAttention2D, (6, 7)),
                                          (NeighborhoodAttention3D, (3, 4, 5))])
def test_modules_have_natten_parameters_and_pad_small_grids(module, grid):
    layer = module(dim=16, num_heads=4, kernel_size=3, dilation=2, rel_pos_bias=True)
    assert sorted(layer.state_dict()) == ['proj.bias', 'proj.weight', 'qkv.bias', 'qkv.weight', 'rpb']
    assert layer.rpb.shape == (4, *([5] * len(grid)))
    x = torch.randn(2, *grid, 16)
    out = layer(x)   # axes below kernel * dilation = 6 are zero-padded, then cropped
    assert out.shape == x.shape
    padded = [max(size, 6) for size in grid]
    big = torch.zeros(2, *padded, 16)
    big[(slice(None), *(slice(0, size) for size in grid))] = x
    expected = layer(big)[(slice(None), *(slice(0, size) for size in grid))]
    torch.testing.assert_close(out, expected)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 6, 6, 2, 4)
    with pytest.raises(ValueError, match='odd'):
        na2d(x, x, x, 4)
    with pytest.raises(ValueError, match='exceeds the grid size 6'):
        na2d(x, x, x, 3, dilation=3)
    with pytest.raises(ValueError, match='rpb must be'):
        na2d(x, x, x, 3, rpb=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match='causal'):
        na2d(x, x, x, 3, is_causal=True, rpb=torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match='kernel_size needs 2 values'):
        na2d(x, x, x, (3, 3, 3))
    with pytest.raises(ValueError, match='must have the batch, grid and heads'):
        na2d(x, x[:, :5], x, 3)
    with pytest.raises(ValueError, match='attn_drop must be 0'):
        NeighborhoodAttention2D(8, 2, 3, attn_drop=0.1)
    with pytest.raises(ValueError, match='takes \\[batch'):
        NeighborhoodAttention2D(8, 2, 3)(torch.randn(4, 8))
    assert math.isfinite(na2d(x, x, x, 3).sum().item())


def test_empty_batches_and_meta_tensors():
    empty = torch.randn(0, 7, 7, 2, 4)
    assert na2d(empty, empty, empty, 3).shape == (0, 7, 7, 2, 4)
    assert NeighborhoodAttention2D(8, 2, 3)(torch.randn(0, 5, 5, 8)).shape == (0, 5, 5, 8)
    meta = torch.empty(1, 7, 7, 2, 4, device='meta')
    assert na2d(meta, meta, meta, 3).shape == (1, 7, 7, 2, 4)
    with pytest.raises(ValueError, match='8 channels'):
        NeighborhoodAttention2D(8, 2, 3)(torch.randn(1, 5, 5, 16))
