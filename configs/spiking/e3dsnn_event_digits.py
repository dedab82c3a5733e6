# E-3DSNN on event-camera digits as sparse space-time voxels: the events of each digit binned into T = 10 time
# slices on the 34x34 sensor, one (t, y, x) site per non-empty cell with its ON/OFF counts (~3,100 sites each);
# spike sparse convolutions run over time and space at once.
_base_ = ['../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='SparseDataPreprocessor'),
    backbone=dict(type='E3DSNN', in_channels=2, channels=(16, 32, 64, 128), depths=(1, 1, 1, 1), max_spikes=4),
    head=dict(type='ClassificationHead', num_classes=10, in_channels=128),
)
dataset = dict(type='EventDigitsDataset', representation='voxels', time_bins=10,
               pipeline=[dict(type='PackEventInputs')])
train_dataloader = dict(batch_size=32, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(dataset, split='train'))
val_dataloader = dict(batch_size=128, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(dataset, split='val'))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator
max_epochs = 15
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
