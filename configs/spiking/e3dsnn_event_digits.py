# E-3DSNN on event-camera digits as sparse space-time voxels: the events of each digit binned into T = 10 time
# slices on the 34x34 sensor, one (t, y, x) site per non-empty cell with its ON/OFF counts (~3,100 sites each);
# spike sparse convolutions run over time and space at once.
_base_ = ['../_base_/datasets/event_digits.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='SparseDataPreprocessor'),
    backbone=dict(type='E3DSNN', in_channels=2, channels=(16, 32, 64, 128), depths=(1, 1, 1, 1), max_spikes=4),
    head=dict(type='ClassificationHead', num_classes=10, in_channels=128),
)
train_dataloader = dict(dataset=dict(representation='voxels', time_bins=10))
val_dataloader = dict(dataset=dict(representation='voxels', time_bins=10))
test_dataloader = dict(dataset=dict(representation='voxels', time_bins=10))
max_epochs = 15
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
