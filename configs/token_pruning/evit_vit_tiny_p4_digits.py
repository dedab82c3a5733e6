# EViT at keep 0.7 (3 stages), fine-tuned for 10 epochs from the dense digits ViT (96.10 % top-1).
_base_ = ['../vit/vit_tiny_p4_digits.py']

model = dict(
    type='TokenPruningClassifier',
    backbone=dict(type='TokenPruningViT', method=dict(type='EViTRouter', keep_rate=0.7, locations=(1, 3, 4))),
)
load_from = 'zoo:vit_tiny_p4_digits'
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
# keep rate: cosine warm-up from 1.0 to 0.7 over the first 4 epochs (EViT's schedule, shortened)
custom_hooks = [dict(type='ReseedPerEpochHook'), dict(type='SyncBuffersHook'), dict(type='DistributedConsistencyHook'),
                dict(type='KeepRateScheduleHook', start_epoch=0, end_epoch=4)]
