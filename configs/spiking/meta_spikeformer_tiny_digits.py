# Meta-SpikeFormer at a tiny size (16/32/64 channels, one convolutional block per early stage, two spike-driven
# transformer blocks) on the real digits, 32x32; each image is shown for T = 4 time steps (direct coding).
_base_ = ['../_base_/datasets/digits.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(type='MetaSpikeFormer', in_channels=1, channels=(16, 32, 64), conv_depths=(1, 1),
                  transformer_depth=2, heads=4, time_steps=4),
    head=dict(type='ClassificationHead', num_classes=10, in_channels=64),
)
max_epochs = 15
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
