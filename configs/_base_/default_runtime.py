default_scope = 'sparsevision'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_best='auto'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
# ReseedPerEpochHook makes `--resume` exact; SyncBuffersHook averages BatchNorm statistics across processes
# after each epoch; DistributedConsistencyHook then checks that all processes hold the same model.
custom_hooks = [dict(type='ReseedPerEpochHook'), dict(type='SyncBuffersHook'), dict(type='DistributedConsistencyHook')]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
