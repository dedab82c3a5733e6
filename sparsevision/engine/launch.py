"""Command-line config handling and Runner construction shared by tools/train.py and tools/test.py."""
import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
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


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options tools/train.py and tools/test.py share (OpenMMLab contract)."""
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher for multi-process runs')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def config_from_arguments(args: argparse.Namespace) -> Config:
    """Load ``args.config`` (a file or zoo name) and apply the common options."""
    from ..model_zoo import load_config

    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config)
    cfg.launcher = args.launcher
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(cfg.filename).stem)
    return cfg
