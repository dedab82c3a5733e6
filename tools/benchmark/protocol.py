"""Shared pieces of the benchmark protocol (see BENCHMARKS.md): command line, timing, machine description, table,
JSON."""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

import sparsevision


def argument_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The protocol's options (``--quick``, ``--threads``, ``--json``, ``--device``); scripts add their own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--quick', action='store_true', help=quick_help)
    parser.add_argument('--threads', type=int, nargs='+', default=[torch.get_num_threads()],
                        help='CPU thread counts to run (default: the current torch thread count)')
    parser.add_argument('--json', type=Path, help='also write the results as JSON to this path')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    return parser


def describe_machine(device: str, threads: Sequence[int]) -> tuple:
    """Print the machine line of the header; exits when ``device`` is cuda without CUDA. ``(cpu, gpu)`` names."""
    if device == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: CUDA is not available')
    cpu = cpu_name()
    gpu = torch.cuda.get_device_name() if device == 'cuda' else None
    print(f'machine: {os.cpu_count()} cores, {cpu}{f", GPU {gpu}" if gpu else ""}; device {device}; '
          f'threads {list(threads)}; load average {os.getloadavg()[0]:.2f} at start')
    return cpu, gpu


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def best_time(function, calls: int, repetitions: int, device: str) -> float:
    """Best of ``repetitions`` timings of ``calls`` back-to-back calls, in seconds per call (CUDA events on cuda)."""
    best = float('inf')
    for _ in range(repetitions):
        if device == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(calls):
                function()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            started = time.perf_counter()
            for _ in range(calls):
                function()
            elapsed = time.perf_counter() - started
        best = min(best, elapsed / calls)
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
