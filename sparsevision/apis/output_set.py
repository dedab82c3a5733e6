"""Write the files of one run (PNG, JSON, token maps) as a whole or not at all."""
import contextlib
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union


@dataclass(frozen=True)
class StagedOutputs:
    """Where a run writes its files (``staging``) and where they end up (``out_dir``)."""

    staging: Path
    out_dir: Path

    def path(self, relative: Union[str, Path]) -> Path:
        """Where to write the output ``relative`` (to ``out_dir``) now."""
        return self.staging / relative

    def destination(self, staged: Union[str, Path]) -> Path:
        """Where the staged file ``staged`` ends up."""
        return self.out_dir / Path(staged).relative_to(self.staging)


@contextlib.contextmanager
def output_set(out_dir: Union[str, Path], owned: Sequence[str] = ()) -> Iterator[StagedOutputs]:
    """Stage a run's files in a hidden temporary folder inside ``out_dir`` and move them into place together.

    On a clean exit each staged file replaces its destination (``os.replace``), then the files matching ``owned``
    that this run did not write (stale outputs of an earlier run) are removed; SIGINT and SIGTERM wait until
    that is done. On an exception, or on SIGTERM while the set is open (turned into ``SystemExit``), the
    temporary folder is removed and ``out_dir`` is left as it was (and removed if this call created it).

    Args:
        out_dir: where the files go.
        owned: glob patterns, relative to ``out_dir``, of files that belong to this kind of run, e.g.
            ``'token_maps/*.png'``.

    Yields:
        The :class:`StagedOutputs` to write to.
    """
    out_dir = Path(out_dir)
    with sigterm_as_exit():
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix='.', suffix='.partial'))
        try:
            outputs = StagedOutputs(staging, out_dir)
            yield outputs
            with signals_deferred():
                move_into_place(outputs, owned)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()


def move_into_place(outputs: StagedOutputs, owned: Sequence[str]) -> None:
    """Replace each destination by its staged file, then remove the ``owned`` files that were not replaced."""
    staged = sorted(path for path in outputs.staging.rglob('*') if path.is_file())
    written = {outputs.destination(path) for path in staged}
    for path in staged:
        outputs.destination(path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, outputs.destination(path))
    for pattern in owned:
        for stale in set(outputs.out_dir.glob(pattern)) - written:
            stale.unlink()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While open, SIGTERM raises ``SystemExit`` (so ``finally`` blocks clean up) instead of ending the process
    on the spot. Python sets and runs signal handlers in the main thread only: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_on_signal(signum: int, frame) -> None:
    """Signal handler: exit with the shell's status for a signal (128 + its number)."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then hand the first that arrived meanwhile to the handler
    it would have met. Python runs signal handlers in the main thread only: elsewhere there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])
