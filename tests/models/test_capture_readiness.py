"""Once its input's kernel maps exist, a SparseUNet training step issues no op from Python that would make the host
wait for the device: what CUDA-graph capture needs of the layers' code. Counted on CPU tensors at the dispatcher;
the GPU kernels' own paths are counted per op (test_implicit_gemm, test_pool_features), and tools/gpu_check.py
captures the step in a CUDA graph on a GPU."""
from sparsevision.utils.host_syncs import HostSyncs
from test_sparse_backbones import SMALL_UNET, clustered_voxels

from sparsevision.models.backbones.sparse_unet import SparseUNet
from sparsevision.sparse import SparseTensor


def test_sparse_unet_step_on_a_seen_input_issues_no_host_sync():
    features, coors = clustered_voxels(shape=[13, 45, 37])   # not a multiple of 16: the network pads the grid
    x = SparseTensor(features, coors, [13, 45, 37], 2)
    unet = SparseUNet(4, **SMALL_UNET)
    unet(x).features.sum().backward()   # builds and caches the kernel maps (with the syncs that takes)
    with HostSyncs() as syncs:
        unet(x).features.square().mean().backward()
    assert syncs.seen == []


def test_a_padded_grid_shares_its_kernel_maps_across_calls():
    features, coors = clustered_voxels(shape=[13, 45, 37])
    x = SparseTensor(features, coors, [13, 45, 37], 2)
    padded = x.on_grid([16, 48, 48])
    assert padded.indices is x.indices and padded.spatial_shape == [16, 48, 48]
    assert x.on_grid([16, 48, 48]).kernel_maps is padded.kernel_maps is not x.kernel_maps
    assert x.on_grid([13, 45, 37]) is x
