# E-3DSNN with an inverse-convolution decoder segmenting scenes of three shapes on a ground plane, per voxel
# (9 classes: ground + 8 primitives; 32^3 grid, ~1,500 occupied voxels per scene).
_base_ = ['../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

classes = ('ground', 'box', 'sphere', 'cylinder', 'cone', 'torus', 'tetrahedron', 'octahedron', 'arrow')
model = dict(
    type='SparseSegmentor',
    data_preprocessor=dict(type='SparseDataPreprocessor'),
    backbone=dict(type='E3DSNNUNet', in_channels=4, channels=(16, 32, 64, 128), depths=(1, 1, 1, 1), max_spikes=4),
    num_classes=len(classes),
    in_channels=16,
)
dataset = dict(type='ShapeSceneSegmentationDataset', grid=32, pipeline=[dict(type='PackPointCloudInputs')])
train_dataloader = dict(batch_size=8, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(dataset, split='train', scenes=400))
val_dataloader = dict(batch_size=16, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(dataset, split='val', scenes=80))
test_dataloader = val_dataloader
val_evaluator = dict(type='MeanIoU', num_classes=len(classes), class_names=classes)
test_evaluator = val_evaluator
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=2, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(save_best='segmentation/mIoU', rule='greater'))
