"""Train a sparsevision model from a config (OpenMMLab contract).

    sparsevision-train CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                              [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

(``python tools/train.py ...`` in a checkout runs the same.)

Multi-process: ``torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch``
(NCCL on GPUs, gloo on CPU).
"""
import argparse

import torch

from ..engine import (add_common_arguments, build_runner, check_config, check_resumable, config_from_arguments,
                      run_command)

TRAINING_ENTRIES = ('model', 'train_dataloader', 'train_cfg', 'optim_wrapper')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a sparsevision model.')
    parser.add_argument('config', help='config file (or zoo model name)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or from the latest checkpoint in the work dir when no path is given')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (needs a GPU)')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_arguments(args)
    check_config(cfg, TRAINING_ENTRIES)
    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit("error: --amp needs a CUDA device (mmengine's AmpOptimWrapper); train on CPU without it")
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
            raise SystemExit(f'error: --amp needs optim_wrapper type OptimWrapper, got {cfg.optim_wrapper.type}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        check_resumable(args.resume)
        cfg.resume, cfg.load_from = True, args.resume
    build_runner(cfg).train()


def run() -> None:
    """The console entry point: bad input ends it with one ``error:`` line."""
    run_command(main)
