"""Shared pieces of the benchmark protocol (see BENCHMARKS.md): timing, machine description, table, JSON."""
import json
import platform
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

import sparsevision


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def best_time(function, calls: int, repetitions: int, device: str) -> float:
    """Best of ``repetitions`` timings of ``calls`` back-to-back calls, in seconds per call."""
    best = float('inf')
    for _ in range(repetitions):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            function()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def print_table(header: Sequence[str], table: List[Sequence[str]]) -> None:
    """Columns padded to width: the first left-aligned, the rest right-aligned."""
    widths = [max(len(line[column]) for line in [header] + table) for column in range(len(header))]
    for line in [header, ['-' * width for width in widths]] + table:
        print(' | '.join(cell.ljust(width) if column == 0 else cell.rjust(width)
                         for column, (cell, width) in enumerate(zip(line, widths))))


def write_json(path: Path, benchmark: str, peer: str, device: str, threads, cpu: str, gpu: Optional[str],
               rows: List[dict]) -> None:
    """The results in BENCHMARKS.md's JSON schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        'benchmark': benchmark,
        'versions': {'sparsevision': sparsevision.__version__, 'torch': torch.__version__, 'peer': peer},
        'machine': {'device': device, 'threads': threads, 'cpu': cpu, **({'gpu': gpu} if gpu else {})},
        'rows': rows,
    }, indent=2) + '\n')
    print(f'\nwrote {path}')
