# E-3DSNN (multi-spike neurons, D = 4; spike sparse convolutions on the engine) classifying 8 primitive shapes:
# randomly scaled, rotated and jittered surface samples, voxelised on a 24^3 grid (~770 occupied voxels each);
# 300 training and 50 validation samples per shape.
_base_ = ['../_base_/datasets/shapes.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='SparseDataPreprocessor'),
    backbone=dict(type='E3DSNN', in_channels=4, channels=(16, 32, 64, 128), depths=(1, 1, 1, 1), max_spikes=4),
    head=dict(type='ClassificationHead', num_classes=8, in_channels=128),
)
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=2, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
