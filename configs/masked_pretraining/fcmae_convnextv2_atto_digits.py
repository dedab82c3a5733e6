# ConvNeXt V2's FCMAE on the real digits (labels unused): ConvNeXt V2-Atto with a stride-1 stem on 32x32 input,
# so the downsample ratio is 8 and the patch grid 4x4, 60% hidden; GRN normalises over each image's visible sites.
_base_ = ['../_base_/datasets/digits_unlabelled.py', '../_base_/schedules/adamw_cosine.py',
          '../_base_/default_runtime.py']

model = dict(
    type='FCMAE',
    backbone=dict(type='TimmBackbone', model_name='convnextv2_atto', patch_size=1, in_channels=1),
    input_size=32,
    in_channels=1,
    mask_ratio=0.6,
    decoder_dim=128,
    normalize_target=True,
)
val_cfg = None
test_cfg = None
max_epochs = 100
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs + 1)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=10, save_best=None))
