"""Evaluate a trained checkpoint on a config's test set (OpenMMLab contract).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...] [--launcher ...]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sparsevision.engine import add_common_arguments, build_runner, config_from_arguments  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a sparsevision checkpoint.')
    parser.add_argument('config', help='config file (or zoo model name)')
    parser.add_argument('checkpoint', help='checkpoint file (mmengine checkpoint or plain state_dict)')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not exist')
    cfg = config_from_arguments(args)
    cfg.load_from = args.checkpoint
    metrics = build_runner(cfg).test()
    print(' '.join(f'{key}: {value:.2f}' for key, value in metrics.items()))
    return metrics


if __name__ == '__main__':
    main()
