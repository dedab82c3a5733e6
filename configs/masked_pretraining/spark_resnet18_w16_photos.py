# SparK pretraining on random crops of real photos (scikit-image's astronaut, coffee and rocket; chelsea is held
# out for the reconstruction demo): 64x64 crops, downsample ratio 8, an 8x8 patch grid with 60% hidden.
_base_ = ['../_base_/schedules/adamw_cosine.py', '../_base_/default_runtime.py']

image_size = 64
model = dict(
    type='SparK',
    backbone=dict(type='ResNet', depth=18, in_channels=3, base_channels=16, small_input=True, out_indices=(0, 1, 2, 3)),
    input_size=image_size,
    in_channels=3,
    mask_ratio=0.6,
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
)
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='PhotoCropsDataset', photos=('astronaut', 'coffee', 'rocket'), samples_per_epoch=640,
                 pipeline=[dict(type='RandomResizedCrop', size=image_size, scale=(0.05, 0.5)),
                           dict(type='RandomHorizontalFlip'),
                           dict(type='PackClassificationInputs')]),
)
val_cfg = None
test_cfg = None
max_epochs = 100
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs + 1)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.04))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=10, save_best=None))
