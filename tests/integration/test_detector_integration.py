"""Our backbones inside other detection frameworks: an mmdet3d-style config build, and the OpenPCDet adapter."""
import mmengine.registry as mmengine_registry
import pytest
import torch
from mmengine.registry import DefaultScope, Registry

from sparsevision.integration import OpenPCDetBackbone3D
from sparsevision.models.backbones import SparseEncoder
from sparsevision.sparse import SparseTensor

GRID_SIZE = [176, 200, 40]               # OpenPCDet's voxel grid (x, y, z): KITTI with 8x coarser x and y
SPARSE_SHAPE = [41, 200, 176]            # grid_size[::-1] + [1, 0, 0]


def kitti_like_voxels(batch_size=2, voxels=1500, channels=4, seed=0):
    """``(features [N, C], coors [N, 4] int32 (batch, z, y, x))`` inside the voxel grid."""
    generator = torch.Generator().manual_seed(seed)
    coors = torch.stack([torch.randint(0, batch_size, (voxels,), generator=generator),
                         torch.randint(0, GRID_SIZE[2], (voxels,), generator=generator),
                         torch.randint(0, GRID_SIZE[1], (voxels,), generator=generator),
                         torch.randint(0, GRID_SIZE[0], (voxels,), generator=generator)], dim=1)
    coors = torch.unique(coors, dim=0).int()
    return torch.randn(coors.shape[0], channels, generator=generator), coors


@pytest.fixture(scope='module')
def mmdet3d_models():
    """A stand-in for mmdet3d's MODELS: a child of mmengine's root registry with its own scope."""
    return mmengine_registry.MODELS.children.get('mmdet3d') or \
        Registry('model', parent=mmengine_registry.MODELS, scope='mmdet3d')


def test_mmdet3d_config_builds_and_runs_our_encoder(mmdet3d_models):
    """``pts_middle_encoder=dict(type='sparsevision.SparseEncoder', ...)`` in an mmdet3d config, no patching."""
    middle_encoder = dict(type='sparsevision.SparseEncoder', in_channels=4, sparse_shape=SPARSE_SHAPE,
                          order=('conv', 'norm', 'act'), norm_cfg=dict(type='BN1d', eps=1e-3, momentum=0.01),
                          encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
                          encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
                          block_type='basicblock')
    with DefaultScope.overwrite_default_scope('mmdet3d'):
        from_mmdet3d = mmdet3d_models.build(middle_encoder)
        from_root = mmengine_registry.MODELS.build(middle_encoder)
    for encoder in (from_mmdet3d, from_root):
        assert type(encoder) is SparseEncoder
    features, coors = kitti_like_voxels()
    bev = from_mmdet3d(features, coors, 2)   # mmdet3d's call: (voxel_features, coors, batch_size)
    assert bev.shape == (2, 256, 25, 22)
    bev.mean().backward()


def test_openpcdet_adapter_fills_the_batch_dict():
    features, coors = kitti_like_voxels()
    backbone = OpenPCDetBackbone3D(dict(NAME='OpenPCDetBackbone3D'), input_channels=4, grid_size=GRID_SIZE,
                                   voxel_size=[0.4, 0.4, 0.1], point_cloud_range=[0, -40, -3, 70.4, 40, 1])
    batch_dict = dict(batch_size=2, voxel_features=features, voxel_coords=coors)
    assert backbone(batch_dict) is batch_dict
    assert backbone.num_point_features == 128 and backbone.num_bev_features == 256
    assert backbone.backbone_channels == dict(x_conv1=16, x_conv2=32, x_conv3=64, x_conv4=64)
    assert batch_dict['encoded_spconv_tensor_stride'] == 8
    assert batch_dict['encoded_spconv_tensor'].spatial_shape == [2, 25, 22]
    assert batch_dict['multi_scale_3d_strides'] == dict(x_conv1=1, x_conv2=2, x_conv3=4, x_conv4=8)
    stages = batch_dict['multi_scale_3d_features']
    assert [stages[name].spatial_shape for name in ('x_conv1', 'x_conv2', 'x_conv3', 'x_conv4')] == \
        [[41, 200, 176], [21, 100, 88], [11, 50, 44], [5, 25, 22]]
    assert all(isinstance(stage, SparseTensor) for stage in stages.values())
    assert batch_dict['spatial_features'].shape == (2, 256, 25, 22)
    assert batch_dict['spatial_features_stride'] == 8
    batch_dict['spatial_features'].mean().backward()


def test_openpcdet_adapter_has_voxelbackbone8x_keys_and_matches_our_encoder():
    """Its state_dict keys are VoxelBackBone8x's; with the same weights it computes what SparseEncoder computes."""
    encoder = SparseEncoder(4, SPARSE_SHAPE).eval()
    backbone = OpenPCDetBackbone3D(dict(), input_channels=4, grid_size=GRID_SIZE).eval()
    renamed = {key.replace('encoder_layers.encoder_layer', 'conv'): value
               for key, value in encoder.state_dict().items()}
    assert set(renamed) == set(backbone.state_dict())
    assert 'conv1.0.0.weight' in renamed and 'conv4.2.1.running_var' in renamed and 'conv_out.0.weight' in renamed
    backbone.load_state_dict(renamed, strict=True)
    features, coors = kitti_like_voxels()
    batch_dict = backbone(dict(batch_size=2, voxel_features=features, voxel_coords=coors))
    torch.testing.assert_close(batch_dict['spatial_features'], encoder(features, coors, 2), rtol=0, atol=0)


def test_openpcdet_adapter_builds_other_layouts_and_refuses_non_encoders():
    backbone = OpenPCDetBackbone3D(
        dict(SPARSEVISION_BACKBONE=dict(
            encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
            encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)), block_type='basicblock')),
        input_channels=4, grid_size=GRID_SIZE)
    assert backbone.backbone_channels == dict(x_conv1=32, x_conv2=64, x_conv3=128, x_conv4=128)
    with pytest.raises(ValueError, match='SECOND-style encoder'):
        OpenPCDetBackbone3D(dict(SPARSEVISION_BACKBONE=dict(type='SparseUNet')), input_channels=4,
                            grid_size=GRID_SIZE)
