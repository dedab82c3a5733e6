# ToMe merging 6 tokens per block (64 -> 28 tokens, about EViT keep 0.7's compute), fine-tuned for 10 epochs
# from the dense digits ViT (96.10 % top-1).
_base_ = ['../vit/vit_tiny_p4_digits.py']

model = dict(
    type='TokenPruningClassifier',
    backbone=dict(type='TokenPruningViT', method=dict(type='ToMeRouter', r=6, proportional_attention=True)),
)
load_from = 'zoo:vit_tiny_p4_digits'
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
