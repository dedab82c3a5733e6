"""Steps ``memcheck`` and ``initcheck``: the GPU op tests under ``compute-sanitizer``."""
import os
import re
import shlex
import shutil
from collections import Counter
from pathlib import Path
from typing import Optional

from .context import CheckContext, Outcome, StepFailed, StepSkipped, python_command, run_command
from .op_tests import describe_counts, junit_counts, pytest_arguments, test_environment

SANITIZER_LIMIT_S = 180
SANITIZER_ERROR_EXIT_CODE = 99
ERROR_SUMMARY = re.compile(r'ERROR SUMMARY: (\d+) error')
REPORT_LOCATION = re.compile(r'^=+\s+at (?:0x[0-9a-f]+ in )?([^\s(]+)', re.M)   # the frame a report names first


def find_compute_sanitizer() -> Optional[str]:
    """``compute-sanitizer`` under ``CUDA_HOME``/bin, /usr/local/cuda/bin, or on the PATH; None if absent."""
    for folder in (os.environ.get('CUDA_HOME'), '/usr/local/cuda'):
        if folder and (Path(folder) / 'bin' / 'compute-sanitizer').exists():
            return str(Path(folder) / 'bin' / 'compute-sanitizer')
    return shutil.which('compute-sanitizer')


def sanitize_gpu_tests(tool: str, context: CheckContext) -> Outcome:
    """The GPU test selection under ``compute-sanitizer --tool <tool>``; fails on any report or failed test.

    PyTorch's caching allocator is turned off (``PYTORCH_NO_CUDA_MEMORY_CACHING=1``) so each tensor is its own
    allocation and out-of-bounds or uninitialised reads inside a cached block are seen.
    """
    sanitizer = find_compute_sanitizer()
    junit = context.work_dir / f'{tool}.xml'
    junit.unlink(missing_ok=True)
    command = [sanitizer or 'compute-sanitizer', '--tool', tool, '--error-exitcode', str(SANITIZER_ERROR_EXIT_CODE),
               '--print-limit', '100', *python_command(*pytest_arguments(junit))]
    if not context.on_gpu:
        raise StepSkipped('the CPU dry run: compute-sanitizer checks GPU memory'
                          + ('' if sanitizer else '; compute-sanitizer is not installed here either'),
                          {'command': shlex.join(command)})
    if sanitizer is None:
        raise StepSkipped('compute-sanitizer not found under CUDA_HOME/bin, /usr/local/cuda/bin or on the PATH')
    env = {**test_environment(context), 'PYTORCH_NO_CUDA_MEMORY_CACHING': '1'}
    result = run_command(command, context, SANITIZER_LIMIT_S, env, log_name=f'{tool}.log')
    log = (context.work_dir / f'{tool}.log').read_text(errors='replace')
    reports = sum(int(count) for count in ERROR_SUMMARY.findall(log))
    counts = junit_counts(junit)
    locations = Counter(REPORT_LOCATION.findall(log)).most_common(10)
    details = {**result, 'reports': reports, 'report_locations': dict(locations), **counts}
    summary = f'{reports} reports; tests: {describe_counts(counts)}'
    if result['timed_out']:
        raise StepFailed(f'ran past {SANITIZER_LIMIT_S} s ({reports} reports so far)', details)
    if reports or result['returncode'] != 0:
        raise StepFailed(f'exit code {result["returncode"]}; {summary}', details)
    return Outcome(summary, details)
