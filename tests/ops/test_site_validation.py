"""check_indices remembers what it found, so coordinates are read back from the device once per coordinate set."""
import pytest
import torch

import sparsevision.ops as ops
from sparsevision.ops import map_validation, site_validation
from sparsevision.utils.host_syncs import HostSyncs


def range_reads(function) -> int:
    with HostSyncs() as syncs:
        function()
    return syncs.ops['aten::amin']   # check_indices reads the column minima and maxima together


def test_checked_sites_are_not_read_again_for_a_grid_they_fit():
    sites = ops.check_indices(torch.tensor([[0, 1, 2], [1, 3, 0]]), [4, 4], batch_size=2)
    assert range_reads(lambda: ops.check_indices(sites, [4, 4], batch_size=2)) == 0
    assert range_reads(lambda: ops.check_indices(sites, [8, 5])) == 0   # a larger grid
    with pytest.raises(ValueError, match='column 1 reaches 3 but spatial_shape is \\[3, 4\\]'):
        ops.check_indices(sites, [3, 4])
    with pytest.raises(ValueError, match='batch index 1 but batch_size is 1'):
        ops.check_indices(sites, [4, 4], batch_size=1)


def test_an_in_place_edit_is_checked_again():
    sites = ops.check_indices(torch.tensor([[0, 1, 2], [0, 3, 0]], dtype=torch.int32), [4, 4])
    sites[1, 1] = 7
    with pytest.raises(ValueError, match='column 1 reaches 7'):
        ops.check_indices(sites, [4, 4])


def test_converted_sites_are_remembered_as_the_int32_tensor_returned():
    wide = torch.tensor([[0, 1, 2]], dtype=torch.int64)
    sites = ops.check_indices(wide, [4, 4])
    assert sites.dtype == torch.int32 and site_validation.checked_sites.get(wide) is None
    assert range_reads(lambda: ops.check_indices(sites, [4, 4])) == 0


def test_downsampled_sites_are_known_distinct_and_on_their_grid():
    sites = ops.check_indices(torch.tensor([[0, 1, 2, 3], [1, 5, 5, 5], [1, 4, 4, 4]]), [6, 6, 6])
    assert not site_validation.known_distinct(sites)
    outputs, out_shape = ops.downsample_indices(sites, [6, 6, 6], 2, 2)
    assert site_validation.known_distinct(sites) and site_validation.known_distinct(outputs)
    assert site_validation.checked_sites.get(outputs).bounds == (1, 2, 2, 2)
    assert range_reads(lambda: ops.build_kernel_map(sites, outputs, [6, 6, 6], 2, 2)) == 0
    neighbors = ops.build_kernel_map(sites, outputs, [6, 6, 6], 2, 2)
    assert map_validation.known_invertible(neighbors, 3) and not map_validation.known_invertible(neighbors, 2)


def test_a_map_onto_outputs_not_known_distinct_is_checked_when_inverted():
    sites = ops.check_indices(torch.tensor([[0, 1, 1], [0, 2, 2]]), [4, 4])
    outputs = torch.tensor([[0, 1, 1], [0, 3, 3]], dtype=torch.int32)
    neighbors = ops.build_kernel_map(sites, outputs, [4, 4], 3, 1, 1)
    assert site_validation.known_distinct(sites) and not map_validation.known_invertible(neighbors, 2)
    assert map_validation.known_invertible(ops.invert_kernel_map(neighbors, 2), 2)


def test_facts_are_forgotten_with_the_tensor():
    remembered = len(site_validation.checked_sites)
    sites = ops.check_indices(torch.tensor([[0, 1, 1]], dtype=torch.int32), [4, 4])
    assert len(site_validation.checked_sites) == remembered + 1
    del sites
    assert len(site_validation.checked_sites) == remembered
