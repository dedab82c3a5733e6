"""``import sparsevision.sparse as spconv`` runs code written for spconv.pytorch, with spconv's numbers."""
import torch
import torch.nn as nn

import pytest

import sparsevision.sparse


def build_second_encoder(spconv, in_channels=4):
    """A SECOND / VoxelBackBone8x-style encoder written against the spconv.pytorch API, as detectors write it."""
    def block(cin, cout, kernel, indice_key, stride=1, padding=0, kind='subm'):
        if kind == 'subm':
            conv = spconv.SubMConv3d(cin, cout, kernel, bias=False, indice_key=indice_key)
        else:
            conv = spconv.SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False,
                                       indice_key=indice_key)
        return spconv.SparseSequential(conv, nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01), nn.ReLU())

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_input = block(in_channels, 16, 3, 'subm1')
            self.conv1 = spconv.SparseSequential(block(16, 16, 3, 'subm1'))
            self.conv2 = spconv.SparseSequential(block(16, 32, 3, 'spconv2', 2, 1, 'spconv'), block(32, 32, 3, 'subm2'))
            self.conv3 = spconv.SparseSequential(block(32, 64, 3, 'spconv3', 2, 1, 'spconv'), block(64, 64, 3, 'subm3'))
            self.conv_out = block(64, 64, (3, 1, 1), 'spconv_down2', (2, 1, 1), 0, 'spconv')

        def forward(self, voxel_features, coors, batch_size, spatial_shape):
            x = spconv.SparseConvTensor(voxel_features, coors.int(), spatial_shape, batch_size)
            x = self.conv3(self.conv2(self.conv1(self.conv_input(x))))
            out = self.conv_out(x)
            dense = out.dense()
            n, c, d, h, w = dense.shape
            return dense.view(n, c * d, h, w), out.replace_feature(out.features * 1.0)

    return Encoder()


def test_second_encoder_matches_spconv(mesh_sites, monkeypatch):
    spconv = pytest.importorskip('spconv.pytorch')
    monkeypatch.setattr(spconv.ops, 'get_current_stream', lambda: 0)
    sites, shape = mesh_sites('bunny10k.obj', 64)
    batch = torch.cat([sites, sites + torch.tensor([1, 0, 0, 0], dtype=torch.int32)])   # the same scene twice
    torch.manual_seed(0)
    theirs = build_second_encoder(spconv)
    ours = build_second_encoder(sparsevision.sparse)
    ours.load_state_dict(theirs.state_dict())
    features = torch.randn(batch.shape[0], 4)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        their_bev, _ = theirs(features, batch, 2, shape)
        our_bev, our_sparse = ours(features, batch, 2, shape)
    finally:
        torch.set_num_threads(previous)
    assert our_bev.shape == their_bev.shape
    torch.testing.assert_close(our_bev, their_bev, rtol=1e-4, atol=1e-4)
    assert isinstance(our_sparse, sparsevision.sparse.SparseConvTensor)


@pytest.mark.parametrize('layer_name, arguments', [('SubMConv3d', dict(kernel_size=1)),
                                                   ('SparseConv3d', dict(kernel_size=1, stride=1)),
                                                   ('SparseConv3d', dict(kernel_size=(1, 1, 1), stride=1))])
def test_kernel_one_layers_read_their_weight_as_spconv_does(mesh_sites, layer_name, arguments):
    """spconv 2.x's conv1x1 path reads the [out, 1, 1, 1, in] memory as [in, out]; a checkpoint must mean the same."""
    spconv = pytest.importorskip('spconv.pytorch')
    indices, shape = mesh_sites('bunny10k.obj', 32)
    features = torch.randn(indices.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = getattr(spconv, layer_name)(5, 7, bias=True, **arguments).double()
    ours = getattr(sparsevision.sparse, layer_name)(5, 7, bias=True, **arguments).double()
    ours.load_state_dict(theirs.state_dict())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)   # spconv's CPU path races with more threads
    try:
        expected = theirs(spconv.SparseConvTensor(features, indices, shape, 1))
    finally:
        torch.set_num_threads(previous)
    actual = ours(sparsevision.sparse.SparseTensor(features, indices, shape, 1))
    torch.testing.assert_close(sorted_by_site(actual), sorted_by_site(expected), rtol=1e-12, atol=1e-12)


def sorted_by_site(tensor):
    """Features in (batch, z, y, x) order (a regular kernel-1 convolution may list its output sites differently)."""
    keys = [column.long() for column in tensor.indices.unbind(1)]
    order = sorted(range(len(keys[0])), key=lambda row: tuple(int(key[row]) for key in keys))
    return tensor.features[order]
