# A small DiNAT (neighbourhood attention with dilations, relative positional bias) trained from scratch on the real
# digits: 32x32 images, tokens on an 8x8 grid, three levels; blocks alternate dilation 2 and 1 on the first level.
_base_ = ['../_base_/datasets/digits.py', '../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='NAT', in_chans=1, num_classes=10, kernel_size=3,
        arch=dict(embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), mlp_ratio=2.0, drop_path_rate=0.1,
                  layer_scale=None, dilations=((1, 2), (1, 1), (1, 1)))),
    head=dict(type='ClassificationHead', num_classes=10, label_smoothing=0.1),
)
max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=2, end=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
