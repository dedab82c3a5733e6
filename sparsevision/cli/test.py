"""Evaluate a trained checkpoint on a config's test set (OpenMMLab contract).

    sparsevision-test CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...] [--launcher ...]

(``python tools/test.py ...`` in a checkout runs the same.) CHECKPOINT is a file or ``zoo:NAME`` (shipped weights).
A checkpoint whose weights are not exactly the model's is refused; ``--cfg-options strict_checkpoint=False`` loads
it partially (mmengine's non-strict load) instead.
"""
import argparse

from ..engine import add_common_arguments, build_runner, check_config, config_from_arguments, run_command
from ..utils.checkpoint import resolve_checkpoint_path
from ..utils.plain_checkpoint import load_plain_checkpoint

TEST_ENTRIES = ('model', 'test_dataloader', 'test_cfg', 'test_evaluator')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a sparsevision checkpoint.')
    parser.add_argument('config', help='config file (or zoo model name)')
    parser.add_argument('checkpoint', help='checkpoint file (mmengine checkpoint or plain state_dict), or zoo:NAME')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    load_plain_checkpoint(resolve_checkpoint_path(args.checkpoint))  # refuses a missing, damaged or crafted file
    cfg = config_from_arguments(args)
    check_config(cfg, TEST_ENTRIES)
    cfg.load_from = args.checkpoint
    if cfg.get('strict_checkpoint', True):
        fit_check = dict(type='CheckpointFitsModelHook', checkpoint_name=args.checkpoint)
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), fit_check]
    metrics = build_runner(cfg).test()
    print(' '.join(f'{key}: {value:.2f}' for key, value in metrics.items()))
    return metrics


def run() -> None:
    """The console entry point: bad input ends it with one ``error:`` line."""
    run_command(main)
