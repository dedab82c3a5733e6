# SparK pretraining of the quarter-width ResNet-18 on the real digits (labels unused): 32x32 input, downsample
# ratio 8, so a 4x4 patch grid with 60% of the patches hidden; the encoder runs sparsely on the visible ones.
_base_ = ['../_base_/datasets/digits_unlabelled.py', '../_base_/schedules/adamw_cosine.py',
          '../_base_/default_runtime.py']

model = dict(
    type='SparK',
    backbone=dict(type='ResNet', depth=18, in_channels=1, base_channels=16, small_input=True, out_indices=(0, 1, 2, 3)),
    input_size=32,
    in_channels=1,
    mask_ratio=0.6,
)
val_cfg = None
test_cfg = None
max_epochs = 200
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs + 1)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.04))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=10, save_best=None))
