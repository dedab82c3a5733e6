"""Train a sparsevision model from a config (OpenMMLab contract).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Multi-process: ``torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch``
(NCCL on GPUs, gloo on CPU).
"""
import argparse
import os
import sys
from pathlib import Path

from mmengine.config import Config, DictAction

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sparsevision.engine import build_runner  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a sparsevision model.')
    parser.add_argument('config', help='config file (or zoo model name)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or from the latest checkpoint in the work dir when no path is given')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher for distributed training')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def make_config(args) -> Config:
    from sparsevision.model_zoo import load_config

    cfg = load_config(args.config)
    cfg.launcher = args.launcher
    cfg.merge_from_dict(args.cfg_options)
    config_name = Path(cfg.filename).stem
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / config_name)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp needs optim_wrapper type OptimWrapper, got {cfg.optim_wrapper.type}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main(argv=None):
    runner = build_runner(make_config(parse_args(argv)))
    runner.train()


if __name__ == '__main__':
    main()
