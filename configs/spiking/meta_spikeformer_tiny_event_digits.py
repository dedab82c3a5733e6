# Meta-SpikeFormer (tiny) on event-camera digits: the real digits moved in three saccades in front of a simulated
# 34x34 event sensor (~5,100 events each), binned into T = 4 frames of ON/OFF counts.
_base_ = ['../_base_/datasets/event_digits.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ImgDataPreprocessor'),   # stacks [T, 2, H, W] frames; no normalisation
    backbone=dict(type='MetaSpikeFormer', in_channels=2, channels=(16, 32, 64), conv_depths=(1, 1),
                  transformer_depth=2, heads=4),
    head=dict(type='ClassificationHead', num_classes=10, in_channels=64),
)
train_dataloader = dict(dataset=dict(representation='frames', time_bins=4))
val_dataloader = dict(dataset=dict(representation='frames', time_bins=4))
test_dataloader = dict(dataset=dict(representation='frames', time_bins=4))
max_epochs = 15
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
