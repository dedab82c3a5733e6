# CenterPoint (class-centre heatmap + box regression on a bird's-eye-view map, rotated BEV NMS) on a SECOND sparse
# encoder, detecting vehicles in simulated street LiDAR sweeps (32 beams x 1024 azimuths, ~32k points). Coordinates
# only (x, y, z); 0.2 m voxels over 102.4 x 51.2 m; the encoder's stride-8 BEV map is refined and brought to
# stride 4 (0.8 m cells) by the neck.
_base_ = ['../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

box_class_names = ('vehicle',)
point_cloud_range = [-51.2, -25.6, -3.0, 51.2, 25.6, 1.2]
voxel_size = [0.2, 0.2, 0.2]
model = dict(
    type='CenterPoint',
    voxel_size=voxel_size,
    point_cloud_range=point_cloud_range,
    data_preprocessor=dict(type='SparseDataPreprocessor'),
    # 21 height cells -> 11 -> 6 -> 3 -> 1 (padding 1 in the last stage): a 128-channel BEV map of 32 x 64 cells
    backbone=dict(type='SparseEncoder', in_channels=3, sparse_shape=[21, 256, 512], output_channels=128,
                  encoder_channels=((16,), (32, 32), (48, 48), (64, 64)),
                  encoder_paddings=((1,), (1, 1), (1, 1), (1, 1))),
    neck=dict(type='BEVNeck', in_channels=128, block_channels=(64, 128), block_depths=(2, 2), block_strides=(1, 2),
              upsample_strides=(2, 4), upsample_channels=(64, 64)),
    head=dict(type='CenterHead', in_channels=128, num_classes=len(box_class_names), out_size_factor=4,
              head_channels=64),
)
train_pipeline = [
    dict(type='SelectPointColumns', columns=(0, 1, 2)),
    dict(type='RandomFlip'),
    dict(type='RandomRotation', angle_range=(-0.3927, 0.3927)),
    dict(type='RandomScale', scale_range=(0.95, 1.05)),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Voxelize', voxel_size=voxel_size, point_cloud_range=point_cloud_range),
    dict(type='PackPointCloudInputs'),
]
test_pipeline = [
    dict(type='SelectPointColumns', columns=(0, 1, 2)),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Voxelize', voxel_size=voxel_size, point_cloud_range=point_cloud_range),
    dict(type='PackPointCloudInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(type='SimulatedLidarSceneDataset', split='train', scenes=240,
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type='SimulatedLidarSceneDataset', split='val', scenes=40, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='DetectionAP', class_names=box_class_names, iou_thresholds=(0.5, 0.7))
test_evaluator = val_evaluator
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.01), clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(save_best='detection/vehicle_BEV_AP@0.5', rule='greater'))
