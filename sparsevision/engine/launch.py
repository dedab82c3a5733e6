"""Build an mmengine Runner that also works for CPU-only distributed runs."""
import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..utils.compat import register_checkpoint_safe_globals


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg`` (or ``RUNNERS.build``) with the fixes mmengine 0.10.7 needs.

    * Runner checkpoints load with ``weights_only=True`` (safe globals registered).
    * Without CUDA, ``--launcher pytorch`` would call ``torch.cuda.set_device``
      and wrap the model with ``device_ids=[rank]``; instead the gloo process
      group is started here and DDP gets ``device_ids=None``.
    """
    register_checkpoint_safe_globals()
    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        if not dist.is_initialized():
            dist.init_process_group('gloo')
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
        cfg.setdefault('env_cfg', {})['dist_cfg'] = dict(backend='gloo')
        os.environ.setdefault('LOCAL_RANK', str(dist.get_rank()))
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
