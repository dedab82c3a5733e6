"""Evaluate a trained checkpoint on a config's test set (OpenMMLab contract).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...] [--launcher ...]
"""
import argparse
import os
import sys
from pathlib import Path

from mmengine.config import DictAction

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sparsevision.engine import build_runner  # noqa: E402
from sparsevision.model_zoo import load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a sparsevision checkpoint.')
    parser.add_argument('config', help='config file (or zoo model name)')
    parser.add_argument('checkpoint', help='checkpoint file (mmengine checkpoint or plain state_dict)')
    parser.add_argument('--work-dir', help='where the evaluation log goes (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. test_dataloader.batch_size=64')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher for distributed testing')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not exist')
    cfg = load_config(args.config)
    cfg.launcher = args.launcher
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(cfg.filename).stem)
    cfg.load_from = args.checkpoint
    metrics = build_runner(cfg).test()
    print(' '.join(f'{key}: {value:.2f}' for key, value in metrics.items()))
    return metrics


if __name__ == '__main__':
    main()
