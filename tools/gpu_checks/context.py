"""What every step of the GPU check receives and how it reports: the run's settings, and the outcome types."""
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_FOLDER = ROOT / 'tools' / 'benchmark'
LOG_TAIL_CHARS = 3000


@dataclass
class CheckContext:
    """The run's settings. ``device`` is ``cuda`` on the GPU machine, ``cpu`` for the dry run."""

    device: str
    quick: bool
    build: bool
    spconv_wheels: Optional[Path]
    work_dir: Path
    deadline: float           # time.monotonic() by which every subprocess must have ended
    cache: dict = field(default_factory=dict)   # what steps share (the scene)

    @property
    def on_gpu(self) -> bool:
        return self.device == 'cuda'

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Outcome:
    """A step that ran: a one-line summary for the table and the details for the JSON."""

    summary: str
    details: dict = field(default_factory=dict)
    mode: str = 'device'      # 'device': ran as on the GPU machine; 'cpu-equivalent': a CPU stand-in ran instead


class StepSkipped(Exception):
    """The step could not run here; the message says why."""

    def __init__(self, reason: str, details: Optional[dict] = None):
        super().__init__(reason)
        self.details = details or {}


class StepFailed(Exception):
    """The step ran and found a problem; the message says which."""

    def __init__(self, reason: str, details: Optional[dict] = None):
        super().__init__(reason)
        self.details = details or {}


def run_command(command: List[str], context: CheckContext, limit_s: float, env: Optional[dict] = None,
                log_name: Optional[str] = None) -> dict:
    """Runs ``command`` in the repository root within ``limit_s`` and the run's deadline.

    Returns ``{'command', 'returncode', 'timed_out', 'seconds', 'log_tail'}``; the whole output goes to
    ``work_dir/log_name`` when given (its path under ``'log'``).
    """
    limit_s = min(limit_s, context.seconds_left())
    if limit_s <= 1:
        raise StepSkipped('the time budget of the check is spent')
    started = time.monotonic()
    try:
        completed = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors='replace', timeout=limit_s)
        output, returncode, timed_out = completed.stdout, completed.returncode, False
    except subprocess.TimeoutExpired as expired:
        output, returncode, timed_out = expired.output or '', None, True
        output = output if isinstance(output, str) else output.decode(errors='replace')
    result = {'command': shlex.join(command), 'returncode': returncode, 'timed_out': timed_out,
              'seconds': round(time.monotonic() - started, 1), 'log_tail': output[-LOG_TAIL_CHARS:]}
    if log_name:
        log = context.work_dir / log_name
        log.write_text(output)
        result['log'] = str(log)
    return result


def python_command(*arguments: str) -> List[str]:
    return [sys.executable, *arguments]
