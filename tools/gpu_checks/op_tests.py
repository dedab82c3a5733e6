"""Step ``tests``: the op tests that exercise GPU code (CUDA kernels, their CPU emulation, Triton kernels).

The selection is found when the check runs, so tests added later join it: every ``GPU_TEST_FOLDER`` file whose name
or text mentions one of ``GPU_TEST_KEYWORDS``, filtered by ``pytest -k`` on the same words (a file whose name
matches runs whole). On the GPU the CUDA kernel tests run on the device only (``SV_SKIP_EMULATION=1``: CI runs the
CPU emulation of the CUDA kernels; GPU minutes go to what it cannot check). On the CPU the tests run on the emulation
and the Triton interpreter instead (minutes on a small machine); with ``--quick`` there they are only collected, which
checks the selection and the command.
"""
import os
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import List

from .context import ROOT, CheckContext, Outcome, StepFailed, StepSkipped, python_command, run_command

GPU_TEST_FOLDER = 'tests/ops'
GPU_TEST_KEYWORDS = ('cuda', 'gpu', 'implicit_gemm', 'triton', 'emu')
TESTS_LIMIT_S = 240
NO_TESTS_COLLECTED = 5     # pytest's exit code
COLLECTED = re.compile(r'(\d+)(?:/\d+)? tests? collected')


def gpu_test_files() -> List[str]:
    """Test files (relative to the repository root) that mention a GPU keyword in their name or text."""
    files = []
    for path in sorted((ROOT / GPU_TEST_FOLDER).glob('test_*.py')):
        text = (path.name + path.read_text(errors='replace')).lower()
        if any(keyword in text for keyword in GPU_TEST_KEYWORDS):
            files.append(str(path.relative_to(ROOT)))
    return files


def pytest_arguments(junit: Path) -> List[str]:
    """``-m pytest`` and its arguments for the GPU selection, writing a JUnit report to ``junit``."""
    files = gpu_test_files()
    if not files:
        raise StepSkipped(f'no test file in {GPU_TEST_FOLDER} mentions {", ".join(GPU_TEST_KEYWORDS)}')
    return ['-m', 'pytest', *files, '-k', ' or '.join(GPU_TEST_KEYWORDS), '-q', '-rs', '-p', 'no:cacheprovider',
            f'--junitxml={junit}']


def test_environment(context: CheckContext) -> dict:
    """The subprocess finds this checkout's package first; on the GPU it skips the CPU emulation backends."""
    path = os.environ.get('PYTHONPATH')
    env = {**os.environ, 'PYTHONPATH': f'{ROOT}{os.pathsep}{path}' if path else str(ROOT)}
    if context.on_gpu:
        env['SV_SKIP_EMULATION'] = '1'
    return env


def junit_counts(junit: Path) -> dict:
    """Counts from a JUnit report (``tests``, ``failures``, ``errors``, ``skipped``) and the commonest skip reasons."""
    if not junit.exists():
        return {}
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    counts = {key: sum(int(suite.get(key, 0)) for suite in suites)
              for key in ('tests', 'failures', 'errors', 'skipped')}
    reasons = Counter(skipped.get('message', '') for skipped in root.iter('skipped'))
    failed = [f'{case.get("classname")}::{case.get("name")}' for case in root.iter('testcase')
              if case.find('failure') is not None or case.find('error') is not None]
    return {**counts, 'skip_reasons': dict(reasons.most_common(5)), 'failed_tests': failed[:20]}


def describe_counts(counts: dict) -> str:
    if not counts:
        return 'no JUnit report'
    passed = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    return (f'{passed} passed, {counts["failures"] + counts["errors"]} failed, {counts["skipped"]} skipped '
            f'of {counts["tests"]}')


def run_gpu_tests(context: CheckContext) -> Outcome:
    """pytest over the GPU selection; fails on any failed test or when nothing was selected."""
    junit = context.work_dir / 'tests.xml'
    junit.unlink(missing_ok=True)
    collect_only = context.quick and not context.on_gpu
    arguments = pytest_arguments(junit) + (['--collect-only'] if collect_only else [])
    result = run_command(python_command(*arguments), context, TESTS_LIMIT_S, test_environment(context),
                         log_name='tests.log')
    counts = {} if collect_only else junit_counts(junit)
    details = {**result, 'files': gpu_test_files(), 'keywords': list(GPU_TEST_KEYWORDS), **counts}
    collected = COLLECTED.findall(result['log_tail'])
    if collect_only:
        summary = f'{collected[-1] if collected else "no"} tests collected (--quick on the CPU: not run)'
    else:
        summary = describe_counts(counts) + ('' if context.on_gpu else ' on the emulation and the Triton interpreter')
    if result['timed_out']:
        raise StepFailed(f'pytest ran past {TESTS_LIMIT_S} s', details)
    if result['returncode'] == NO_TESTS_COLLECTED:
        raise StepFailed('pytest selected no tests', details)
    if result['returncode'] != 0:
        raise StepFailed(f'pytest exited with {result["returncode"]}: {summary}', details)
    mode = 'device' if context.on_gpu else 'cpu-equivalent'
    return Outcome(summary, details, mode)
