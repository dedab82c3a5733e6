"""Fixtures of the demo tests: running a demo in a subprocess and measuring its peak memory."""
import re
import sys

import pytest

PEAK_RSS_WRAPPER = '''
import resource, subprocess, sys
result = subprocess.run([sys.executable, *sys.argv[1:]])
print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)
sys.exit(result.returncode)
'''


@pytest.fixture(scope='session')
def run_with_peak_rss(python_process):
    """``run(args) -> (completed process, peak resident memory in bytes)``: ``python ARGS`` in a fresh process,
    measured by a wrapper process whose only child it is."""
    if sys.platform != 'linux':
        pytest.skip('ru_maxrss is counted in KiB on Linux only')

    def run(args):
        result = python_process(['-c', PEAK_RSS_WRAPPER, *args])
        return result, int(re.findall(r'peak_rss_kib=(\d+)', result.stderr)[-1]) * 1024

    return run
