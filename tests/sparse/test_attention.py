"""SubMAttention: attention over submanifold neighbourhoods, against a brute-force reading of its definition."""
import itertools

import pytest
import torch

from sparsevision.ops.coordinates import keys_to_coordinates
from sparsevision.sparse import SparseTensor, SubMAttention, SubMAttention3d, SubMConv3d


def random_voxels(count=60, shape=(6, 7, 5), channels=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    cells = 2 * shape[0] * shape[1] * shape[2]
    indices = keys_to_coordinates(torch.randperm(cells, generator=generator)[:count], list(shape))
    features = torch.randn(count, channels, generator=generator, dtype=dtype)
    return SparseTensor(features, indices, list(shape), 2)


def brute_force(layer, x):
    """Per site: the occupied sites at each kernel offset (same batch), scores plus the offset's bias, softmax."""
    sites = {tuple(row): n for n, row in enumerate(x.indices.tolist())}
    heads, channels = layer.num_heads, layer.channels
    query, key, value = layer.qkv(x.features).reshape(-1, 3, heads, channels // heads).unbind(dim=1)
    offsets = list(itertools.product(*(range(-(k // 2) * d, k // 2 * d + 1, d)
                                       for k, d in zip(layer.kernel_size, layer.dilation))))
    out = torch.zeros_like(query)
    for n, (batch, *coordinates) in enumerate(x.indices.tolist()):
        neighbours = [(tap, sites[(batch, *(c + o for c, o in zip(coordinates, offset)))])
                      for tap, offset in enumerate(offsets)
                      if (batch, *(c + o for c, o in zip(coordinates, offset))) in sites]
        for h in range(heads):
            scores = torch.stack([query[n, h] @ key[m, h] * query.shape[-1] ** -0.5
                                  + (layer.rpb[h, tap] if layer.rpb is not None else 0) for tap, m in neighbours])
            out[n, h] = sum(w * value[m, h] for w, (_, m) in zip(scores.softmax(0), neighbours))
    return layer.proj(out.reshape(-1, channels))


@pytest.mark.parametrize('kernel_size, dilation, rel_pos_bias', [(3, 1, True), ((3, 1, 5), (1, 1, 2), True),
                                                                 (3, 2, False)])
def test_equals_the_definition(kernel_size, dilation, rel_pos_bias):
    x = random_voxels()
    layer = SubMAttention3d(8, 2, kernel_size, dilation, rel_pos_bias=rel_pos_bias).double()
    out = layer(x)
    assert torch.equal(out.indices, x.indices) and out.spatial_shape == x.spatial_shape
    torch.testing.assert_close(out.features, brute_force(layer, x), rtol=1e-10, atol=1e-10)


def test_shares_the_kernel_map_of_a_submanifold_convolution():
    x = random_voxels(dtype=torch.float32)
    SubMConv3d(8, 8, 3)(x)
    maps_before = dict(x.kernel_maps)
    SubMAttention3d(8, 2)(x)
    assert dict(x.kernel_maps) == maps_before


def test_gradients():
    x = random_voxels(count=20, channels=4)
    layer = SubMAttention3d(4, 2).double()
    features = x.features.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: layer(x.replace_feature(f)).features, features)
    layer(x).features.sum().backward()
    assert layer.rpb.grad is not None and layer.rpb.grad.abs().sum() > 0


def test_no_sites():
    empty = SparseTensor(torch.randn(0, 8), torch.zeros(0, 4, dtype=torch.int32), [4, 4, 4], 1)
    assert SubMAttention3d(8, 2)(empty).features.shape == (0, 8)


def test_bad_input_raises():
    x = random_voxels(dtype=torch.float32)
    with pytest.raises(ValueError, match='expects 16 channels'):
        SubMAttention3d(16, 2)(x)
    with pytest.raises(ValueError, match='2-D SparseTensor'):
        SubMAttention(2, 8, 2)(x)
    with pytest.raises(ValueError, match='odd kernel sizes'):
        SubMAttention3d(8, 2, kernel_size=2)
    with pytest.raises(ValueError, match='not divisible'):
        SubMAttention3d(8, 3)
    duplicated = SparseTensor(torch.randn(2, 8), torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), [4, 4, 4], 1)
    with pytest.raises(ValueError, match='duplicate'):
        SubMAttention3d(8, 2)(duplicated)
