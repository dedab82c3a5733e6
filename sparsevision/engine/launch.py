"""Command-line config handling and Runner construction shared by tools/train.py and tools/test.py."""
import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

from ..utils.checkpoint import ZOO_PREFIX, resolve_checkpoint_path
from ..utils.plain_checkpoint import load_plain_checkpoint

RUNNER_CHECKPOINT_KEYS = ('meta', 'state_dict', 'message_hub')


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg`` (or ``RUNNERS.build``) with the fixes mmengine 0.10.7 needs.

    * mmengine reads local and ``zoo:NAME`` checkpoints (resume, ``load_from``, ``init_cfg`` Pretrained) with
      :func:`~sparsevision.utils.load_plain_checkpoint`: plain data only, nothing in a file can run code, and
      torch's process-wide ``weights_only`` allow-list stays as it is.
    * Without CUDA, ``--launcher pytorch`` would call ``torch.cuda.set_device``
      and wrap the model with ``device_ids=[rank]``; instead the gloo process
      group is started here and DDP gets ``device_ids=None``.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_as_plain_data, force=True)
    CheckpointLoader.register_scheme(prefixes=ZOO_PREFIX, loader=load_from_zoo, force=True)
    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        if not dist.is_initialized():
            dist.init_process_group('gloo')
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
        cfg.setdefault('env_cfg', {})['dist_cfg'] = dict(backend='gloo')
        os.environ.setdefault('LOCAL_RANK', str(dist.get_rank()))
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def load_from_local_as_plain_data(filename: str, map_location=None):
    """mmengine's local checkpoint reader, replaced: plain data only (its log names the part after ``load_from_``)."""
    return load_plain_checkpoint(filename, map_location)


def load_from_zoo(filename: str, map_location=None):
    """``zoo:NAME``: the zoo's shipped weights of model NAME, from any directory."""
    return load_plain_checkpoint(resolve_checkpoint_path(filename), map_location)


def check_resumable(path: str) -> None:
    """Raise unless ``path`` is a checkpoint that ``tools/train.py`` wrote (weights alone cannot resume).

    Raises:
        FileNotFoundError, ValueError: naming what is wrong and what to use instead.
    """
    checkpoint = load_plain_checkpoint(resolve_checkpoint_path(path))
    missing = [key for key in RUNNER_CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f'--resume {path}: not a training checkpoint (no {", ".join(missing)}); resume needs a file '
                         f'that tools/train.py wrote. To start from these weights use --cfg-options load_from={path}')
    meta = checkpoint['meta']
    if not isinstance(meta, dict) or not all(isinstance(meta.get(key), int) for key in ('epoch', 'iter')):
        raise ValueError(f'--resume {path}: its meta has no integer epoch and iter')


def check_config(cfg: Config, entries) -> None:
    """Raise unless ``cfg`` has every one of ``entries`` and positive training lengths.

    Raises:
        ValueError: naming the config file and the missing or bad entry.
    """
    missing = [entry for entry in entries if not cfg.get(entry)]
    if missing:
        raise ValueError(f'config {cfg.filename} has no {", ".join(missing)}: is it a sparsevision model config? '
                         '(see sparsevision.list_models())')
    train_cfg = cfg.get('train_cfg') or {}
    for length in ('max_epochs', 'max_iters'):
        value = train_cfg.get(length)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f'train_cfg.{length} must be a positive integer, got {value!r}')


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


def run_command(main: Callable) -> None:
    """Run a tool's ``main()``; bad input (a ValueError, a missing file, ...) ends it with one ``error:`` line.

    ``SPARSEVISION_TRACEBACK=1`` shows the traceback instead.
    """
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, KeyError) as error:
        if os.environ.get('SPARSEVISION_TRACEBACK') == '1':
            raise
        message = str(error).strip().splitlines() or [type(error).__name__]
        print(f'error: {message[0]}', file=sys.stderr)
        raise SystemExit(2) from None
