"""Everything a GPU machine must check, in one run: ``make gpu-check`` (issue 17, items 6 and 7).

Steps, in order (``STEPS``): build the extension for sm_90; describe the environment; host syncs and kernel
launches of the headline convolution; ours against spconv-cu; a SparseUNet training step in a CUDA graph; the GPU op
tests; the op tests under compute-sanitizer memcheck and initcheck. The short in-process measurements come first, so
a slow build or test run cannot crowd them out of the budget; the CUDA graph comes last of them, as a failed capture
can leave this process's CUDA state unusable (the tests run in processes of their own).

Each step records ok, failed or skipped, with its reason and duration; a failed step does not stop the others, and
the exit code is 1 if any failed. Nothing is fetched: spconv's CUDA wheels come from ``--spconv-wheels DIR`` or the
peer timing is skipped. The steps share a time budget (``--budget-s``) so the whole run ends in time.

``--device cpu`` is the dry run for a machine without a GPU: the same steps, each GPU-only one replaced by its CPU
equivalent (marked ``cpu-equivalent``) or skipped with the reason. It measures nothing, so it runs on one CPU thread
(quick and steady on a loaded machine).

Usage::

    python tools/gpu_check.py [--device cuda|cpu] [--quick] [--no-build] [--spconv-wheels DIR] [--json PATH]
"""
import argparse
import importlib.util
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from gpu_checks import build, cuda_graph, environment, op_tests, peer_timing, sanitizer, syncs_and_launches
from gpu_checks.context import CheckContext, Outcome, StepFailed, StepSkipped

STEPS = (
    ('build', build.build_extension),
    ('environment', environment.describe_environment),
    ('syncs_and_launches', syncs_and_launches.count_syncs_and_launches),
    ('peer_timing', peer_timing.time_against_peer),
    ('cuda_graph', cuda_graph.replay_matches_eager),
    ('tests', op_tests.run_gpu_tests),
    ('memcheck', lambda context: sanitizer.sanitize_gpu_tests('memcheck', context)),
    ('initcheck', lambda context: sanitizer.sanitize_gpu_tests('initcheck', context)),
)
STEP_NAMES = tuple(name for name, _ in STEPS)
STATUSES = ('ok', 'failed', 'skipped')
DEFAULT_BUDGET_S = 540
IN_PROCESS_MINIMUM_S = 20     # an in-process step cannot be stopped: start one only with this much budget left


def run_step(name: str, function, context: CheckContext) -> dict:
    """Runs one step; any exception becomes a failed step with its traceback's tail."""
    started = time.monotonic()
    record = {'name': name, 'status': 'ok', 'mode': 'device', 'reason': None, 'summary': '', 'details': {}}
    try:
        if context.seconds_left() < IN_PROCESS_MINIMUM_S:
            raise StepSkipped('the time budget of the check is spent')
        outcome: Outcome = function(context)
        record.update(summary=outcome.summary, details=outcome.details, mode=outcome.mode)
    except StepSkipped as skip:
        record.update(status='skipped', mode=None, reason=str(skip), details=skip.details)
    except StepFailed as failure:
        record.update(status='failed', reason=str(failure), details=failure.details)
    except Exception as error:  # noqa: BLE001  (the check goes on after any failure)
        record.update(status='failed', reason=f'{type(error).__name__}: {error}'[:500],
                      details={'traceback': traceback.format_exc()[-3000:]})
    record['duration_s'] = round(time.monotonic() - started, 1)
    print(f'[{record["status"]}] {name} ({record["duration_s"]} s): {record["summary"] or record["reason"]}',
          file=sys.stderr, flush=True)
    return record


def markdown_table(steps) -> str:
    lines = ['| step | status | mode | seconds | result |', '| --- | --- | --- | ---: | --- |']
    for step in steps:
        text = step['summary'] if step['status'] == 'ok' else step['reason']
        lines.append(f'| {step["name"]} | {step["status"]} | {step["mode"] or "-"} | {step["duration_s"]} | '
                     f'{str(text).replace("|", "/")} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda',
                        help='cuda on the GPU machine; cpu for the dry run here')
    parser.add_argument('--quick', action='store_true', help='the small scene and model (the CPU uses them anyway)')
    parser.add_argument('--no-build', dest='build', action='store_false', help='use the extension already built')
    parser.add_argument('--spconv-wheels', type=Path, help='a folder of spconv-cu12x, cumm-cu12x (and their needs) '
                        'wheels for the peer timing')
    parser.add_argument('--json', type=Path, help='write the results as JSON here')
    parser.add_argument('--log-dir', type=Path, default=Path('outputs/gpu_check'),
                        help='build and test logs (default: outputs/gpu_check)')
    parser.add_argument('--budget-s', type=float, default=DEFAULT_BUDGET_S,
                        help=f'seconds by which every step must have ended (default {DEFAULT_BUDGET_S})')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('gpu_check --device cuda: CUDA is not available here (use --device cpu for the dry run)')
    if importlib.util.find_spec('sparsevision') is None:
        sys.exit('gpu_check: sparsevision is not importable; run `make gpu-check`, or put the checkout on PYTHONPATH')
    if args.device == 'cpu':
        torch.set_num_threads(1)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    context = CheckContext(device=args.device, quick=args.quick, build=args.build, spconv_wheels=args.spconv_wheels,
                           work_dir=args.log_dir.resolve(), deadline=started + args.budget_s)
    steps = [run_step(name, function, context) for name, function in STEPS]
    report = {
        'check': 'gpu_check', 'device': args.device, 'quick': args.quick,
        'started': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'duration_s': round(time.monotonic() - started, 1),
        'ok': all(step['status'] != 'failed' for step in steps),
        'step_names': list(STEP_NAMES), 'steps': steps,
    }
    print(markdown_table(steps))
    print(f'\n{sum(step["status"] == "failed" for step in steps)} failed, '
          f'{sum(step["status"] == "skipped" for step in steps)} skipped, in {report["duration_s"]} s; logs in '
          f'{args.log_dir}')
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + '\n')
        print(f'wrote {args.json}')
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
