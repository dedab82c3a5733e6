"""Kernel-map ops against the reference, spconv's rulebooks on real meshes, and bad input."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevision.ops as ops
from sparsevision.ops import reference
from sparsevision.ops.coordinates import keys_to_coordinates


def random_sites(count, spatial_shape, batch_size, seed=0):
    """``count`` distinct random coordinates in ``[batch_size, *spatial_shape]``, in random row order."""
    generator = torch.Generator().manual_seed(seed)
    cells = batch_size * int(np.prod(spatial_shape))
    keys = torch.randperm(cells, generator=generator)[:count]
    return keys_to_coordinates(keys, spatial_shape)


def reference_geometry(dims, kernel, stride, padding, dilation):
    return [value if isinstance(value, list) else [value] * dims for value in (kernel, stride, padding, dilation)]


@st.composite
def convolution_cases(draw):
    """Random grids and per-axis geometries (kernels 1-5, so taps form lines of different lengths)."""
    dims = draw(st.integers(1, 4))
    spatial_shape = [draw(st.integers(1, 9)) for _ in range(dims)]

    def per_axis(low, high):
        return draw(st.lists(st.integers(low, high), min_size=dims, max_size=dims))

    kernel, stride, dilation, padding = per_axis(1, 5), per_axis(1, 3), per_axis(1, 2), per_axis(0, 2)
    batch_size = draw(st.integers(1, 3))
    cells = batch_size * int(np.prod(spatial_shape))
    count = draw(st.integers(0, min(cells, 60)))
    return spatial_shape, kernel, stride, padding, dilation, batch_size, count, draw(st.integers(0, 1000))


@settings(max_examples=150, deadline=None)
@given(case=convolution_cases())
def test_strided_maps_match_reference(case):
    spatial_shape, kernel, stride, padding, dilation, batch_size, count, seed = case
    dims = len(spatial_shape)
    out_shape = [(s + 2 * p - d * (k - 1) - 1) // t + 1
                 for s, k, t, p, d in zip(spatial_shape, kernel, stride, padding, dilation)]
    if min(out_shape) <= 0:
        with pytest.raises(ValueError, match='does not fit'):
            ops.downsample_indices(random_sites(count, spatial_shape, batch_size, seed), spatial_shape, kernel,
                                   stride, padding, dilation)
        return
    sites = random_sites(count, spatial_shape, batch_size, seed)
    geometry = reference_geometry(dims, kernel, stride, padding, dilation)
    outputs, shape = ops.downsample_indices(sites, spatial_shape, kernel, stride, padding, dilation)
    assert list(shape) == out_shape
    assert torch.equal(outputs, reference.downsample_indices(sites, spatial_shape, *geometry))
    neighbors = ops.build_kernel_map(sites, outputs, spatial_shape, kernel, stride, padding, dilation)
    assert torch.equal(neighbors, reference.kernel_map(sites, outputs, spatial_shape, *geometry))
    assert ((neighbors >= 0).any(dim=1) | (outputs.shape[0] == 0)).all(), 'every output site must read an input'


@settings(max_examples=100, deadline=None)
@given(case=convolution_cases())
def test_submanifold_maps_match_reference_and_are_symmetric(case):
    spatial_shape, kernel, _, _, dilation, batch_size, count, seed = case
    kernel = [k | 1 for k in kernel]
    padding = [k // 2 * d for k, d in zip(kernel, dilation)]
    sites = random_sites(count, spatial_shape, batch_size, seed)
    neighbors = ops.submanifold_kernel_map(sites, spatial_shape, kernel, dilation)
    geometry = reference_geometry(len(spatial_shape), kernel, 1, padding, dilation)
    assert torch.equal(neighbors, reference.kernel_map(sites, sites, spatial_shape, *geometry))
    # the same geometry on a copy of the sites takes the general (unmirrored) search
    assert torch.equal(neighbors, ops.build_kernel_map(sites, sites.clone(), spatial_shape, kernel, 1, padding,
                                                       dilation))
    taps = neighbors.shape[1]
    if count:
        assert torch.equal(neighbors[:, taps // 2], torch.arange(count, dtype=torch.int32))
        rows, columns = (neighbors >= 0).nonzero(as_tuple=True)
        assert torch.equal(neighbors[neighbors[rows, columns].long(), taps - 1 - columns], rows.to(torch.int32))


def test_hand_computed_1d_example():
    sites = torch.tensor([[0, 3], [0, 0], [0, 1], [1, 1]], dtype=torch.int32)   # x = 3, 0, 1 in batch 0; x=1 in batch 1
    neighbors = ops.submanifold_kernel_map(sites, [5], 3)
    assert neighbors.tolist() == [[-1, 0, -1], [-1, 1, 2], [1, 2, -1], [-1, 3, -1]]
    outputs, shape = ops.downsample_indices(sites, [5], 2, 2)
    assert shape == (2,) and outputs.tolist() == [[0, 0], [0, 1], [1, 0]]
    assert ops.build_kernel_map(sites, outputs, [5], 2, 2).tolist() == [[1, 2], [-1, 0], [-1, 3]]


def test_inverse_map_is_the_transpose():
    sites = random_sites(300, [8, 9, 10], 2)
    outputs, _ = ops.downsample_indices(sites, [8, 9, 10], 3, 2, 1)
    neighbors = ops.build_kernel_map(sites, outputs, [8, 9, 10], 3, 2, 1)
    inverse = ops.invert_kernel_map(neighbors, sites.shape[0])
    assert torch.equal(inverse, reference.invert_kernel_map(neighbors, sites.shape[0]))
    torch.library.opcheck(torch.ops.sparsevision.invert_kernel_map.default, (neighbors, sites.shape[0]))
    assert (inverse >= 0).sum() == (neighbors >= 0).sum()
    rows, taps = (inverse >= 0).nonzero(as_tuple=True)
    assert torch.equal(neighbors[inverse[rows, taps].long(), taps], rows.to(torch.int32))


@pytest.mark.parametrize('case', ['empty', 'single', 'huge', 'many_batches', 'sorted_vs_shuffled'])
def test_adversarial_inputs(case):
    shape = [7, 8, 9]
    if case == 'empty':
        sites = torch.zeros(0, 4, dtype=torch.int32)
    elif case == 'single':
        sites = torch.tensor([[0, 3, 3, 3]], dtype=torch.int32)
    elif case == 'huge':
        shape = [2**20, 2**20, 2**20]   # 2^60 cells per sample: int64 keys needed
        sites = torch.tensor([[1, 2**20 - 1, 2**20 - 1, 2**20 - 1], [1, 2**20 - 1, 2**20 - 1, 2**20 - 2],
                              [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.int32)
    elif case == 'many_batches':
        sites = torch.tensor([[b, b % 7, b % 8, b % 9] for b in range(2000)], dtype=torch.int32)
    else:
        sites = random_sites(400, shape, 3)
    neighbors = ops.submanifold_kernel_map(sites, shape, 3)
    geometry = reference_geometry(3, 3, 1, 1, 1)
    assert torch.equal(neighbors, reference.kernel_map(sites, sites, shape, *geometry))
    outputs, _ = ops.downsample_indices(sites, shape, 3, 2, 1)
    assert torch.equal(outputs, reference.downsample_indices(sites, shape, *reference_geometry(3, 3, 2, 1, 1)))
    if case == 'huge':
        assert neighbors[0].tolist().count(-1) == 25 and neighbors[0, 13] == 0 and neighbors[0, 12] == 1
    if case == 'sorted_vs_shuffled':
        order = torch.argsort(sites[:, 0] * 1000 + sites[:, 1] * 100 + sites[:, 2] * 10 + sites[:, 3])
        sorted_map = ops.submanifold_kernel_map(sites[order], shape, 3)
        remapped = torch.where(sorted_map >= 0, order.to(torch.int32)[sorted_map.clamp(min=0).long()], -1)
        assert torch.equal(remapped, neighbors[order])


@pytest.mark.parametrize('make, message', [
    (lambda: torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), 'duplicate'),
    (lambda: torch.tensor([[0, -1, 1, 1]]), 'negative'),
    (lambda: torch.tensor([[0, 1, 8, 1]]), 'column 2 reaches 8'),
    (lambda: torch.tensor([[0.0, 1.0, 1.0, 1.0]]), 'must be integers'),
    (lambda: torch.tensor([[0, 1, 1]]), r'must be \[N, 4\]'),
])
def test_bad_coordinates_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        ops.submanifold_kernel_map(make(), [8, 8, 8], 3)


def test_native_op_checks_directly():
    """Calling torch.ops directly (no Python checks) still raises ValueError, never crashes."""
    duplicate = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match='duplicate'):
        torch.ops.sparsevision.kernel_map(duplicate, duplicate, [8, 8, 8], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
    outside = torch.tensor([[0, 1, 9, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match='outside the grid'):
        torch.ops.sparsevision.downsample_indices(outside, [8, 8, 8], [3] * 3, [2] * 3, [1] * 3, [1] * 3)


def test_invert_rejects_maps_that_are_not_invertible():
    with pytest.raises(ValueError, match='read by outputs 0 and 1 through tap 0'):
        ops.invert_kernel_map(torch.tensor([[2, -1], [2, 0]], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match=r'kernel map entries must be -1 or input rows in \[0, 3\), got 5'):
        ops.invert_kernel_map(torch.tensor([[5]], dtype=torch.int32), 3)
    assert ops.invert_kernel_map(torch.zeros(0, 27, dtype=torch.int32), 4).eq(-1).all()


def test_batch_size_and_grid_limits():
    sites = torch.tensor([[2, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match='batch index 2 but batch_size is 2'):
        ops.check_indices(sites, [4, 4], batch_size=2)
    with pytest.raises(ValueError, match='more than 2\\^62'):
        ops.check_indices(torch.tensor([[3, 0, 0]]), [2**31 - 1, 2**31 - 1])


def test_bitwise_identical_across_thread_counts():
    sites = random_sites(20000, [40, 60, 60], 2, seed=3)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            outputs, _ = ops.downsample_indices(sites, [40, 60, 60], 3, 2, 1)
            results.append((ops.submanifold_kernel_map(sites, [40, 60, 60], 3), outputs,
                            ops.build_kernel_map(sites, outputs, [40, 60, 60], 3, 2, 1)))
    finally:
        torch.set_num_threads(previous)
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


def test_opcheck():
    sites = random_sites(200, [6, 7, 8], 2)
    torch.library.opcheck(torch.ops.sparsevision.kernel_map.default,
                          (sites, sites, [6, 7, 8], [3] * 3, [1] * 3, [1] * 3, [1] * 3))
    torch.library.opcheck(torch.ops.sparsevision.downsample_indices.default,
                          (sites, [6, 7, 8], [3] * 3, [2] * 3, [1] * 3, [1] * 3),
                          test_utils=('test_schema', 'test_autograd_registration'))


@pytest.mark.parametrize('mesh', ['bunny10k.obj', 'airplane.obj'])
@pytest.mark.parametrize('resolution', [64, 160])
def test_spconv_rulebook_parity_on_real_meshes(mesh_sites, mesh, resolution):
    """Our maps hold exactly spconv's (input, output) pairs per tap; spconv as oracle at 1 thread."""
    spconv_ops = pytest.importorskip('spconv.pytorch.ops')
    from spconv.core import ConvAlgo

    sites, shape = mesh_sites(mesh, resolution)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for subm, kernel, stride, padding in [(True, 3, 1, 1), (False, 3, 2, 1), (False, 2, 2, 0)]:
            out_ids, pairs, counts = spconv_ops.get_indice_pairs(
                sites, 1, shape, ConvAlgo.Native, [kernel] * 3, [stride] * 3, [padding] * 3, [1] * 3, [0] * 3,
                subm)[:3]
            if subm:
                neighbors = ops.submanifold_kernel_map(sites, shape, kernel)
            else:
                outputs, _ = ops.downsample_indices(sites, shape, kernel, stride, padding)
                assert set(map(tuple, out_ids.tolist())) == set(map(tuple, outputs.tolist()))
                neighbors = ops.build_kernel_map(sites, out_ids.int(), shape, kernel, stride, padding)
            taps = kernel**3
            for tap in range(taps):
                rows = (neighbors[:, tap] >= 0).nonzero().flatten()
                ours = set(zip(neighbors[rows, tap].tolist(), rows.tolist()))
                if subm and tap >= taps // 2:
                    # spconv stores only the first half of a submanifold rulebook (centre and mirror implied)
                    if tap > taps // 2:
                        mirror = taps - 1 - tap
                        count = counts[mirror].item()
                        theirs = set(zip(pairs[1, mirror, :count].tolist(), pairs[0, mirror, :count].tolist()))
                        assert ours == theirs
                    continue
                count = counts[tap].item()
                assert ours == set(zip(pairs[0, tap, :count].tolist(), pairs[1, tap, :count].tolist()))
    finally:
        torch.set_num_threads(previous)
