"""CUDA kernels of the kernel-map and sparse-convolution ops against the CPU kernels and the reference.

Skipped without a GPU and the compiled CUDA kernels; run them wherever a GPU is available.
"""
import pytest
import torch

import sparsevision.ops as ops
from sparsevision.ops import extension_info, reference
from sparsevision.ops.coordinates import keys_to_coordinates

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and extension_info().cuda_kernels),
                                reason='CUDA or the CUDA kernels of sparsevision._C are not available')

SPARSE_CONV = torch.ops.sparsevision.sparse_conv.default
WEIGHT_GRAD = torch.ops.sparsevision.sparse_conv_weight_grad.default


def random_sites(count, shape, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cells = batch_size * int(torch.tensor(shape).prod())
    return keys_to_coordinates(torch.randperm(cells, generator=generator)[:count], shape)


GEOMETRIES = [   # (kernel, stride, padding, dilation)
    ([3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
    ([3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1]),
    ([2, 3, 1], [2, 1, 1], [0, 2, 0], [1, 2, 1]),
    ([5, 1, 3], [3, 1, 2], [2, 0, 1], [1, 1, 2]),
]


@pytest.mark.parametrize('count', [0, 1, 500, 3000])
@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_kernel_maps_equal_cpu(count, geometry):
    shape = [12, 15, 18]
    sites = random_sites(count, shape, seed=count)
    outputs, out_shape = ops.downsample_indices(sites, shape, *geometry)
    outputs_cuda, out_shape_cuda = ops.downsample_indices(sites.cuda(), shape, *geometry)
    assert out_shape == out_shape_cuda and torch.equal(outputs_cuda.cpu(), outputs)
    neighbors = ops.build_kernel_map(sites, outputs, shape, *geometry)
    neighbors_cuda = ops.build_kernel_map(sites.cuda(), outputs_cuda, shape, *geometry)
    assert torch.equal(neighbors_cuda.cpu(), neighbors)
    assert torch.equal(ops.invert_kernel_map(neighbors_cuda, count).cpu(), ops.invert_kernel_map(neighbors, count))


def test_submanifold_map_and_huge_coordinates():
    shape = [2**20, 2**20, 2**20]   # keys beyond int32
    sites = torch.tensor([[0, 5, 5, 5], [0, 5, 5, 6], [1, 2**20 - 1, 2**20 - 1, 2**20 - 1]], dtype=torch.int32)
    expected = ops.submanifold_kernel_map(sites, shape, 3)
    assert torch.equal(ops.submanifold_kernel_map(sites.cuda(), shape, 3).cpu(), expected)


def test_bad_input_raises():
    sites = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32, device='cuda')
    with pytest.raises(ValueError, match='duplicate'):
        torch.ops.sparsevision.kernel_map(sites, sites, [4, 4, 4], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
    outside = torch.tensor([[0, 9, 1, 1]], dtype=torch.int32, device='cuda')
    with pytest.raises(ValueError, match='outside the grid'):
        torch.ops.sparsevision.kernel_map(outside, outside, [4, 4, 4], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
    with pytest.raises(ValueError, match='is read by'):
        torch.ops.sparsevision.invert_kernel_map(torch.zeros(2, 1, dtype=torch.int32, device='cuda'), 3)
    features, weight = torch.randn(3, 4, device='cuda'), torch.randn(27, 4, 8, device='cuda')
    broken = torch.full((2, 27), -1, dtype=torch.int32, device='cuda')
    broken[0, 0] = 3
    with pytest.raises(ValueError, match='kernel map entries'):
        SPARSE_CONV(features, weight, broken, broken, 1)


def conv_case(count, groups, in_per_group, out_per_group, dtype, strided=False, seed=0):
    shape = [10, 12, 14]
    sites = random_sites(count, shape, seed=seed)
    if strided:
        outputs, _ = ops.downsample_indices(sites, shape, 3, 2, 1)
        neighbors = ops.build_kernel_map(sites, outputs, shape, 3, 2, 1)
    else:
        neighbors = ops.submanifold_kernel_map(sites, shape, 3)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, groups * in_per_group, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.randn(27, in_per_group, groups * out_per_group, generator=generator, dtype=torch.float64).to(dtype)
    return features.cuda(), weight.cuda(), neighbors.cuda(), ops.invert_kernel_map(neighbors, count).cuda()


@pytest.mark.parametrize('groups, in_per_group, out_per_group', [(1, 16, 32), (1, 3, 5), (4, 2, 3), (16, 1, 1)])
@pytest.mark.parametrize('strided', [False, True])
def test_conv_matches_reference(groups, in_per_group, out_per_group, strided):
    features, weight, neighbors, inverse = conv_case(800, groups, in_per_group, out_per_group, torch.float64, strided)
    out = ops.sparse_conv(features, weight, neighbors, inverse, groups)
    torch.testing.assert_close(out, reference.sparse_conv(features, weight, neighbors, inverse, groups))
    grad_output = torch.randn_like(out)
    torch.testing.assert_close(WEIGHT_GRAD(features, grad_output, neighbors, inverse, groups),
                               reference.sparse_conv_weight_grad(features, grad_output, neighbors, inverse, groups))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reduced_precision(dtype):
    features, weight, neighbors, inverse = conv_case(2000, 1, 32, 32, torch.float32)
    expected = ops.sparse_conv(features, weight, neighbors, inverse, 1)
    out = ops.sparse_conv(features.to(dtype), weight.to(dtype), neighbors, inverse, 1)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2e-2 * expected.abs().max().item())


def test_bitwise_reproducible():
    features, weight, neighbors, inverse = conv_case(5000, 1, 32, 64, torch.float32, seed=1)
    grad_output = torch.randn(neighbors.shape[0], 64, device='cuda')
    first = (SPARSE_CONV(features, weight, neighbors, inverse, 1),
             WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1))
    for _ in range(3):
        again = (SPARSE_CONV(features, weight, neighbors, inverse, 1),
                 WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1))
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_gradcheck_and_opcheck():
    features, weight, neighbors, inverse = conv_case(30, 2, 2, 3, torch.float64, strided=True)
    inputs = (features.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, w: ops.sparse_conv(x, w, neighbors, inverse, 2), inputs)
    assert torch.autograd.gradgradcheck(lambda x, w: ops.sparse_conv(x, w, neighbors, inverse, 2), inputs)
    torch.library.opcheck(SPARSE_CONV, (features, weight, neighbors, inverse, 2))
    sites = random_sites(200, [8, 8, 8]).cuda()
    torch.library.opcheck(torch.ops.sparsevision.kernel_map.default,
                          (sites, sites, [8, 8, 8], [3] * 3, [1] * 3, [1] * 3, [1] * 3))
