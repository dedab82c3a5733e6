"""Sparse 3D backbones: shapes, gradients, clear errors, and spconv twins with mmdet3d's / Pointcept's layout."""
import contextlib
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from mmengine.structures import BaseDataElement

from sparsevision.models.backbones import SparseEncoder, SparseResNet, SparseUNet
from sparsevision.models.layers import SparseBasicBlock, build_sparse_norm, conv_norm_act
from sparsevision.registry import MODELS
from sparsevision.sparse import SparseTensor

KITTI_LIKE_SHAPE = [41, 200, 176]   # KITTI's [41, 1600, 1408] with 8x coarser x and y
CENTERPOINT_LAYOUT = dict(encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
                          encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, (0, 1, 1)), (0, 0)),
                          block_type='basicblock')
SMALL_UNET = dict(base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1))


def clustered_voxels(batch_size=2, clusters=25, per_cluster=60, shape=KITTI_LIKE_SHAPE, channels=4, seed=0):
    """``(features [N, C], coors [N, 4] int32 (batch, z, y, x))``: blobs of voxels near the ground, like LiDAR."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for sample in range(batch_size):
        centres = torch.stack([torch.randint(3, min(12, shape[0] - 3), (clusters,), generator=generator),
                               torch.randint(4, shape[1] - 4, (clusters,), generator=generator),
                               torch.randint(4, shape[2] - 4, (clusters,), generator=generator)], dim=1)
        offsets = torch.randint(-3, 4, (clusters, per_cluster, 3), generator=generator)
        sites = (centres[:, None] + offsets).reshape(-1, 3)
        rows.append(torch.cat([torch.full((sites.shape[0], 1), sample), sites], dim=1))
    coors = torch.unique(torch.cat(rows), dim=0).int()
    return torch.randn(coors.shape[0], channels, generator=generator), coors


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial affine parameters and running statistics, so a mismatch in any norm shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            size = module.num_features
            module.weight.data = torch.rand(size, generator=generator) + 0.5
            module.bias.data = torch.randn(size, generator=generator) * 0.1
            module.running_mean = torch.randn(size, generator=generator) * 0.1
            module.running_var = torch.rand(size, generator=generator) + 0.5


def sorted_by_site(x) -> torch.Tensor:
    """``[N, 4 + C]``: a sparse tensor's sites and features in (batch, z, y, x) order (libraries order rows
    differently)."""
    rows = torch.cat([x.indices.to(x.features.dtype), x.features], dim=1)
    keys = x.indices.long()
    keys = ((keys[:, 0] * x.spatial_shape[0] + keys[:, 1]) * x.spatial_shape[1] + keys[:, 2]) * x.spatial_shape[2] \
        + keys[:, 3]
    return rows[keys.argsort()]


@contextlib.contextmanager
def one_thread():
    """spconv's CPU kernels race above one thread: it is the oracle only at 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def norm(channels):
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def mmdet3d_second_twin(spconv, in_channels, sparse_shape, encoder_channels=((16,), (32, 32, 32), (64, 64, 64),
                        (64, 64, 64)), encoder_paddings=((1,), (1, 1, 1), (1, 1, 1), ((0, 1, 1), 1, 1)),
                        block_type='conv_module'):
    """mmdet3d's SparseEncoder layout (module names, unit order, indice keys) written against spconv.pytorch."""
    def unit(cin, cout, kernel, key, stride=1, padding=0, strided=False):
        conv = (spconv.SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False, indice_key=key)
                if strided else spconv.SubMConv3d(cin, cout, kernel, padding=padding, bias=False, indice_key=key))
        return spconv.SparseSequential(conv, norm(cout), nn.ReLU())

    class BasicBlock(spconv.SparseModule):   # mmdet3d's SparseBasicBlock: mmdet's BasicBlock on SubMConv3d
        def __init__(self, channels):
            super().__init__()
            self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = norm(channels)
            self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = norm(channels)
            self.relu = nn.ReLU()

        def forward(self, x):
            out = self.conv1(x)
            out = self.conv2(out.replace_feature(self.relu(self.bn1(out.features))))
            return out.replace_feature(self.relu(self.bn2(out.features) + x.features))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_input = unit(in_channels, 16, 3, 'subm1', padding=1)
            self.encoder_layers = spconv.SparseSequential()
            width = 16
            for i, (widths, paddings) in enumerate(zip(encoder_channels, encoder_paddings)):
                units = []
                for j, (out_width, padding) in enumerate(zip(widths, paddings)):
                    if block_type == 'conv_module' and i > 0 and j == 0 or \
                            block_type == 'basicblock' and j == len(widths) - 1 and i < len(encoder_channels) - 1:
                        units.append(unit(width, out_width, 3, f'spconv{i + 1}', 2, padding, strided=True))
                    elif block_type == 'conv_module':
                        units.append(unit(width, out_width, 3, f'subm{i + 1}', padding=padding))
                    else:
                        units.append(BasicBlock(out_width))
                    width = out_width
                self.encoder_layers.add_module(f'encoder_layer{i + 1}', spconv.SparseSequential(*units))
            self.conv_out = unit(width, 128, (3, 1, 1), 'spconv_down2', (2, 1, 1), 0, strided=True)

        def forward(self, voxel_features, coors, batch_size):
            x = self.conv_input(spconv.SparseConvTensor(voxel_features, coors, sparse_shape, batch_size))
            stages = []
            for stage in self.encoder_layers:
                x = stage(x)
                stages.append(x)
            dense = self.conv_out(x).dense()
            batch, channels, depth, height, width = dense.shape
            return dense.view(batch, channels * depth, height, width), stages

    return Encoder()


def pointcept_unet_twin(spconv, in_channels, base_channels, channels, layers):
    """Pointcept's SpUNet-v1m1 layout (names, kernel sizes, indice keys, skip order), no classifier, on spconv."""
    class Block(spconv.SparseModule):
        def __init__(self, cin, cout, key):
            super().__init__()
            if cin != cout:
                self.proj = spconv.SparseSequential(spconv.SubMConv3d(cin, cout, 1, bias=False), norm(cout))
            self.conv1 = spconv.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key)
            self.bn1 = norm(cout)
            self.conv2 = spconv.SubMConv3d(cout, cout, 3, padding=1, bias=False, indice_key=key)
            self.bn2 = norm(cout)
            self.relu = nn.ReLU()

        def forward(self, x):
            out = self.conv1(x)
            out = self.conv2(out.replace_feature(self.relu(self.bn1(out.features))))
            shortcut = self.proj(x).features if hasattr(self, 'proj') else x.features
            return out.replace_feature(self.relu(self.bn2(out.features) + shortcut))

    def blocks(cin, cout, count, key):
        return spconv.SparseSequential(OrderedDict((f'block{i}', Block(cin if i == 0 else cout, cout, key))
                                                   for i in range(count)))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            stages = len(channels) // 2
            self.conv_input = spconv.SparseSequential(
                spconv.SubMConv3d(in_channels, base_channels, 5, bias=False, indice_key='stem'), norm(base_channels),
                nn.ReLU())
            self.down, self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            enc_width, dec_width = base_channels, channels[-1]
            for s in range(stages):
                self.down.append(spconv.SparseSequential(
                    spconv.SparseConv3d(enc_width, channels[s], 2, stride=2, bias=False, indice_key=f'spconv{s + 1}'),
                    norm(channels[s]), nn.ReLU()))
                self.enc.append(blocks(channels[s], channels[s], layers[s], f'subm{s + 1}'))
                self.up.append(spconv.SparseSequential(
                    spconv.SparseInverseConv3d(channels[-s - 2], dec_width, 2, bias=False, indice_key=f'spconv{s + 1}'),
                    norm(dec_width), nn.ReLU()))
                self.dec.append(blocks(dec_width + enc_width, dec_width, layers[-s - 1], f'subm{s}'))
                enc_width, dec_width = channels[s], channels[-s - 2]

        def forward(self, x):
            x = self.conv_input(x)
            skips = [x]
            for down, enc in zip(self.down, self.enc):
                x = enc(down(x))
                skips.append(x)
            x = skips.pop()
            for s in reversed(range(len(self.up))):
                x = self.up[s](x)
                x = self.dec[s](x.replace_feature(torch.cat([x.features, skips.pop().features], dim=1)))
            return x

    return UNet()


@pytest.fixture(scope='module')
def spconv():
    return pytest.importorskip('spconv.pytorch')


# spconv 2.3.8's dense() indexes with a list, which torch deprecates; not ours to fix
spconv_dense_warning = pytest.mark.filterwarnings('ignore:Using a non-tuple sequence:UserWarning')


# ------------------------------------------------------------------------------------------------------------------
# SparseEncoder (SECOND)
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('layout, stage_shapes', [
    ({}, [[41, 200, 176], [21, 100, 88], [11, 50, 44], [5, 25, 22]]),
    (CENTERPOINT_LAYOUT, [[21, 100, 88], [11, 50, 44], [5, 25, 22], [5, 25, 22]]),
])
def test_second_encoder_shapes_and_gradients(layout, stage_shapes):
    torch.manual_seed(0)
    features, coors = clustered_voxels()
    encoder = SparseEncoder(4, KITTI_LIKE_SHAPE, return_middle_feats=True, **layout)
    bev, stages = encoder(features, coors, 2)
    assert bev.shape == (2, 256, 25, 22) and encoder.out_channels == 256 and encoder.bev_shape == (25, 22)
    assert [stage.spatial_shape for stage in stages] == stage_shapes
    bev.square().mean().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_second_encoder_state_dict_keys_are_mmdet3d():
    keys = SparseEncoder(4, KITTI_LIKE_SHAPE).state_dict()
    for key in ['conv_input.0.weight', 'conv_input.1.running_var', 'encoder_layers.encoder_layer1.0.0.weight',
                'encoder_layers.encoder_layer4.0.1.num_batches_tracked', 'conv_out.0.weight', 'conv_out.1.bias']:
        assert key in keys
    assert keys['conv_out.0.weight'].shape == (128, 3, 1, 1, 64)   # spconv 2.x layout [out, *kernel, in]
    block_keys = SparseEncoder(4, KITTI_LIKE_SHAPE, **CENTERPOINT_LAYOUT).state_dict()
    assert 'encoder_layers.encoder_layer1.0.conv1.weight' in block_keys
    assert 'encoder_layers.encoder_layer1.1.bn2.running_mean' in block_keys
    assert block_keys['encoder_layers.encoder_layer1.2.0.weight'].shape == (32, 3, 3, 3, 16)


@spconv_dense_warning
@pytest.mark.parametrize('layout', [{}, CENTERPOINT_LAYOUT], ids=['conv_module', 'basicblock'])
def test_second_encoder_matches_spconv_twin_with_its_state_dict(spconv, layout):
    """The spconv twin's state_dict loads with strict=True; both agree in float64, in eval and training mode."""
    features, coors = clustered_voxels()
    features = features.double()
    torch.manual_seed(0)
    theirs = mmdet3d_second_twin(spconv, 4, KITTI_LIKE_SHAPE, **layout)
    randomise_batch_norms(theirs)
    theirs.double()
    ours = SparseEncoder(4, KITTI_LIKE_SHAPE, return_middle_feats=True, **layout).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for training in (False, True):
        theirs.train(training)
        ours.train(training)
        with one_thread():
            their_bev, their_stages = theirs(features, coors, 2)
        our_bev, our_stages = ours(features, coors, 2)
        torch.testing.assert_close(our_bev, their_bev, rtol=1e-9, atol=1e-9)
        for our_stage, their_stage in zip(our_stages, their_stages):
            torch.testing.assert_close(sorted_by_site(our_stage), sorted_by_site(their_stage), rtol=1e-9, atol=1e-9)
    their_state = theirs.state_dict()   # the running statistics moved the same way
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, their_state[key], rtol=1e-9, atol=1e-12)


def test_second_encoder_runs_on_sparse_shape_for_a_voxel_grid_tensor():
    """A SparseTensor on the voxel grid [40, H, W] (our preprocessor) runs on sparse_shape [41, H, W], as mmdet3d."""
    features, coors = clustered_voxels()
    encoder = SparseEncoder(4, KITTI_LIKE_SHAPE).eval()
    expected = encoder(features, coors, 2)
    voxel_grid = SparseTensor(features, coors, [40, 200, 176], 2)
    torch.testing.assert_close(encoder(voxel_grid), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match='does not fit in sparse_shape'):
        encoder(SparseTensor(features, coors, [42, 200, 176], 2))


def test_second_encoder_rejects_bad_inputs():
    features, coors = clustered_voxels()
    encoder = SparseEncoder(4, KITTI_LIKE_SHAPE)
    with pytest.raises(ValueError, match='integers'):
        encoder(features, coors.float(), 2)
    with pytest.raises(ValueError, match=r'coors must be \[N, 4\]'):
        encoder(features, coors[:, 1:], 2)
    with pytest.raises(ValueError, match=r'coors must be \[N, 4\]'):
        encoder(features[:-1], coors, 2)
    outside = coors.clone()
    outside[0, 2] = KITTI_LIKE_SHAPE[1]
    with pytest.raises(ValueError, match='spatial_shape'):
        encoder(features, outside, 2)
    negative = coors.clone()
    negative[0, 3] = -1
    with pytest.raises(ValueError, match='negative'):
        encoder(features, negative, 2)
    with pytest.raises(ValueError, match='batch_size is 1'):
        encoder(features, coors, 1)
    with pytest.raises(ValueError, match='not both'):
        encoder(SparseTensor(features, coors, KITTI_LIKE_SHAPE, 2), coors, 2)
    with pytest.raises(ValueError, match='float tensor'):
        encoder(coors, coors, 2)


@pytest.mark.parametrize('arguments, message', [
    (dict(block_type='bottleneck'), 'block_type'),
    (dict(order=('conv', 'norm')), 'permutation'),
    (dict(encoder_paddings=((1,), (1, 1, 1), (1, 1, 1))), 'encoder_paddings'),
    (dict(block_type='basicblock'), 'keeps its width'),
    (dict(sparse_shape=[4, 8, 8]), 'too small'),
])
def test_second_encoder_rejects_bad_arguments_at_build_time(arguments, message):
    with pytest.raises(ValueError, match=message):
        SparseEncoder(**{'in_channels': 4, 'sparse_shape': KITTI_LIKE_SHAPE, **arguments})


def test_pre_activation_order_makes_the_stem_a_bare_convolution():
    encoder = SparseEncoder(4, KITTI_LIKE_SHAPE, order=('norm', 'act', 'conv'))
    assert len(encoder.conv_input) == 1 and len(encoder.conv_out) == 3   # as mmdet3d


# ------------------------------------------------------------------------------------------------------------------
# SparseUNet, SparseResNet, blocks
# ------------------------------------------------------------------------------------------------------------------

def test_sparse_unet_returns_features_on_the_input_sites():
    features, coors = clustered_voxels(shape=[13, 45, 37])   # odd sizes: the last rows must survive the k2 s2 path
    x = SparseTensor(features, coors, [13, 45, 37], 2)
    unet = SparseUNet(4, **SMALL_UNET)
    y = unet(x)
    assert y.indices is x.indices and y.spatial_shape == [13, 45, 37] and y.features.shape == (len(coors), 8)
    assert unet.out_channels == 8
    y.features.square().mean().backward()
    assert all(parameter.grad is not None for parameter in unet.parameters())


def test_sparse_unet_default_layout_is_pointcept_spunet():
    state = SparseUNet(6).state_dict()
    assert state['conv_input.0.weight'].shape == (32, 5, 5, 5, 6)
    assert state['down.0.0.weight'].shape == (32, 2, 2, 2, 32)
    assert state['enc.3.block5.conv2.weight'].shape == (256, 3, 3, 3, 256)
    assert state['up.3.0.weight'].shape == (256, 2, 2, 2, 256)
    assert state['dec.3.block0.proj.0.weight'].shape == (256, 1, 1, 1, 384)
    assert state['dec.0.block1.conv1.weight'].shape == (96, 3, 3, 3, 96)
    assert not any(key.startswith('dec.0.block1.proj') for key in state)


def test_sparse_unet_matches_spconv_twin_with_its_state_dict(spconv):
    features, coors = clustered_voxels(shape=[16, 48, 48])
    features = features.double()
    torch.manual_seed(0)
    layout = dict(base_channels=8, channels=(8, 16, 24, 32, 24, 16, 8, 8), layers=(1, 2, 1, 1, 1, 1, 2, 1))
    theirs = pointcept_unet_twin(spconv, 4, **layout).eval()
    randomise_batch_norms(theirs)
    theirs.double()
    ours = SparseUNet(4, **layout).double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)   # kernel-1 `proj` weights too: read as spconv does
    with one_thread():
        expected = theirs(spconv.SparseConvTensor(features, coors, [16, 48, 48], 2))
    actual = ours(SparseTensor(features, coors, [16, 48, 48], 2))
    assert torch.equal(expected.indices, actual.indices)
    torch.testing.assert_close(actual.features, expected.features, rtol=1e-9, atol=1e-9)


def test_sparse_unet_plugs_into_the_segmentor():
    features, coors = clustered_voxels(shape=[16, 48, 48])
    segmentor = MODELS.build(dict(type='SparseSegmentor', backbone=dict(type='SparseUNet', in_channels=4, **SMALL_UNET),
                                  num_classes=3, in_channels=8))
    counts = coors[:, 0].bincount().tolist()
    samples = [BaseDataElement(gt_seg=torch.randint(0, 3, (count,))) for count in counts]
    losses = segmentor(SparseTensor(features, coors, [16, 48, 48], 2), samples, mode='loss')
    losses['loss'].backward()


def test_sparse_unet_rejects_bad_arguments():
    with pytest.raises(ValueError, match='same even length'):
        SparseUNet(4, channels=(8, 16, 8), layers=(1, 1, 1))
    with pytest.raises(ValueError, match='3-D SparseTensor'):
        SparseUNet(4, **SMALL_UNET)(torch.zeros(3, 4))


def test_sparse_resnet_pools_per_sample_for_a_classifier():
    features, coors = clustered_voxels(shape=[16, 48, 48])
    resnet = SparseResNet(4, channels=(8, 16, 24), depths=(1, 1, 1))
    (pooled,) = resnet(SparseTensor(features, coors, [16, 48, 48], 3))   # sample 2 has no sites
    assert pooled.shape == (3, 24) and resnet.out_channels == 24
    assert torch.equal(pooled[2], torch.zeros(24))
    classifier = MODELS.build(dict(type='ImageClassifier',
                                   backbone=dict(type='SparseResNet', in_channels=4, channels=(8, 16), depths=(1, 1)),
                                   head=dict(type='ClassificationHead', num_classes=5, in_channels=16)))
    samples = [BaseDataElement(gt_label=torch.tensor(label)) for label in (1, 4)]
    classifier(SparseTensor(features, coors, [16, 48, 48], 2), samples, mode='loss')['loss'].backward()
    with pytest.raises(ValueError, match='same stages'):
        SparseResNet(4, channels=(8, 16), depths=(1,))


def test_blocks():
    features, coors = clustered_voxels(shape=[16, 48, 48])
    x = SparseTensor(features, coors, [16, 48, 48], 2)
    block = SparseBasicBlock(4, 8)
    assert sorted(name for name, _ in block.named_children()) == ['bn1', 'bn2', 'conv1', 'conv2', 'proj', 'relu']
    assert block(x).features.shape == (len(coors), 8) and SparseBasicBlock(4, 4).proj is None
    pre_activation = conv_norm_act(4, 8, 3, order=('norm', 'act', 'conv'))
    before = features.clone()
    pre_activation(x)
    assert torch.equal(x.features, before), 'a leading ReLU must not change its input'
    assert pre_activation[0].num_features == 4
    norm_layer = build_sparse_norm(dict(type='BN1d', eps=1e-3, momentum=0.01), 8)
    assert (norm_layer.eps, norm_layer.momentum) == (1e-3, 0.01)
    with pytest.raises(ValueError, match='not supported'):
        build_sparse_norm(dict(type='GN', num_groups=2), 8)
    with pytest.raises(ValueError, match='conv_type'):
        conv_norm_act(4, 8, 3, conv_type='Conv3d')
