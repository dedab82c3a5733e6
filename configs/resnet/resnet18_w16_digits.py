# ResNet-18 at a quarter width (16 base channels) with the small-image stem, trained on the real digits.
_base_ = ['../_base_/datasets/digits.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=18, in_channels=1, base_channels=16, small_input=True),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='ClassificationHead', num_classes=10, in_channels=128),
)
max_epochs = 15
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
