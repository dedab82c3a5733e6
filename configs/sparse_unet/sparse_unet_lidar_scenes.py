# SparseUNet (submanifold residual blocks, k2 s2 sparse down/up-sampling, concatenated skips) segmenting simulated
# street LiDAR sweeps per point: ground, vehicle, pole, building. 32 beams x 1024 azimuths, ~32k points a sweep;
# coordinates only (x, y, z), 0.2 m voxels over +-51.2 m, labels per point through each point's voxel.
_base_ = ['../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

class_names = ('ground', 'vehicle', 'pole', 'building')
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
voxel_size = [0.2, 0.2, 0.2]
model = dict(
    type='SparseSegmentor',
    data_preprocessor=dict(type='SparseDataPreprocessor'),
    backbone=dict(type='SparseUNet', in_channels=3, base_channels=16, channels=(16, 32, 48, 64, 48, 48, 32, 32),
                  layers=(1, 1, 1, 1, 1, 1, 1, 1)),
    num_classes=len(class_names),
    in_channels=32,
)
train_pipeline = [
    dict(type='SelectPointColumns', columns=(0, 1, 2)),
    dict(type='RandomRotation', angle_range=(-3.1416, 3.1416)),
    dict(type='RandomFlip'),
    dict(type='RandomScale', scale_range=(0.95, 1.05)),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Voxelize', voxel_size=voxel_size, point_cloud_range=point_cloud_range),
    dict(type='PackPointCloudInputs'),
]
test_pipeline = [
    dict(type='SelectPointColumns', columns=(0, 1, 2)),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Voxelize', voxel_size=voxel_size, point_cloud_range=point_cloud_range),
    dict(type='PackPointCloudInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(type='SimulatedLidarSceneDataset', split='train', scenes=240,
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type='SimulatedLidarSceneDataset', split='val', scenes=40, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='MeanIoU', num_classes=len(class_names), class_names=class_names, level='point')
test_evaluator = val_evaluator
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(save_best='segmentation/mIoU', rule='greater'))
