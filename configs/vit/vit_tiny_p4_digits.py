# A tiny timm ViT (patch 4, 64 tokens) trained from scratch on the real digits.
_base_ = ['../_base_/datasets/digits.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer', img_size=32, patch_size=4, in_chans=1, num_classes=10,
        embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, drop_path_rate=0.1),
    head=dict(type='ClassificationHead', num_classes=10, label_smoothing=0.1),
)
max_epochs = 50
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=3, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=3, end=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
