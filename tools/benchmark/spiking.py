"""Benchmark the event-driven spike sparse convolution against the dense-site computation of the same layer.

Ours: ``ops.spike_sparse_conv``, which adds the weight rows of the non-zero spikes only (work ~ spikes). Peer: the
same layer run as an ordinary sparse convolution over all occupied sites, ``ops.sparse_conv`` (work ~ sites x C_in;
the engine's fastest path, itself 0.4x spconv's time). Same spikes, weights and kernel map, float32, forward.

Input: the street scene of ``scenes.py`` (open3d ray-cast LiDAR sweeps, ~115k voxels at 0.1 m), a submanifold
k3 convolution 64 -> 64 channels, binary spikes drawn independently per (site, channel) at firing rates 5, 10, 20
and 50 %, plus integer multi-spikes (values 1-4) at 10 %. ``layer auto`` rows time ``SpikeSparseConvolution``,
which estimates the firing rate of its input and takes the event-driven path only below its threshold, against
the ordinary ``SubMConv3d`` layer with the same weights (both pay the same layer overhead).

``ratio`` is ours/peer time: lower is better; ``speedup`` = 1 / ratio (the median of per-round ratios; rounds
alternate which side runs first; ``spread`` is their min-max). ``match``: ours equals the peer bitwise
(``torch.equal``). Follows ``/work/shared/BENCHMARKS.md``.

Usage::

    python tools/benchmark/spiking.py [--quick] [--threads 1 2] [--json PATH] [--device cpu]
"""
import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

import sparsevision
from sparsevision import ops
from sparsevision.sparse import SparseTensor, SubMConv3d
from sparsevision.sparse.spike_conv import SpikeSparseConvolution

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)
from scenes import street_scene  # noqa: E402  (tools/benchmark/scenes.py)

CHANNELS = 64
FIRING_RATES = (0.05, 0.10, 0.20, 0.50)
REPETITIONS = 5
PEER = 'dense-site sparse convolution of the same layer (sparsevision.ops.sparse_conv over all occupied sites)'


def spikes_at(rate: float, sites: int, generator: torch.Generator, max_spikes: int = 1) -> torch.Tensor:
    """``[sites, CHANNELS]`` spikes: non-zero with probability ``rate``, valued 1 (or uniform in 1..max_spikes)."""
    fired = torch.rand(sites, CHANNELS, generator=generator) < rate
    counts = torch.randint(1, max_spikes + 1, (sites, CHANNELS), generator=generator)
    return (fired * counts).float()


def timed_pair(ours, peer, rounds):
    ours_times, peer_times = [], []
    for round_number in range(rounds):
        sides = [(ours_times, ours), (peer_times, peer)]
        for times, function in sides[::-1] if round_number % 2 else sides:
            times.append(protocol.best_time(function, 1, REPETITIONS, 'cpu'))
    return ours_times, peer_times


def run_case(name, spikes, weight, neighbors, inverse, threads, rounds, layers=None, tensor=None):
    torch.set_num_threads(threads)
    if layers is None:
        peer = lambda: ops.sparse_conv(spikes, weight, neighbors, inverse, 1)  # noqa: E731
        ours = lambda: ops.spike_sparse_conv(spikes, weight, neighbors, inverse)  # noqa: E731
        matches = torch.equal(ours(), peer())
    else:   # the spike layer against the ordinary layer with the same weights
        ours = lambda: layers[0](tensor).features  # noqa: E731
        peer = lambda: layers[1](tensor).features  # noqa: E731
        matches = torch.equal(ours(), peer())
    ours(), peer()
    ours_times, peer_times = timed_pair(ours, peer, rounds)
    ratios = [mine / theirs for mine, theirs in zip(ours_times, peer_times)]
    nonzero = int((spikes != 0).sum())
    return {
        'case': f'{name}, {threads} thread{"s" if threads > 1 else ""} (time)',
        'threads': threads,
        'ours_ms': statistics.median(ours_times) * 1e3,
        'peer_ms': statistics.median(peer_times) * 1e3,
        'ratio': statistics.median(ratios),
        'speedup': 1 / statistics.median(ratios),
        'rounds': ratios,
        'match': matches,
        'max_abs_diff': 0.0 if matches else float('nan'),
        'firing_rate': nonzero / spikes.numel(),
    }


def all_cases(quick: bool):
    sites = street_scene()
    generator = torch.Generator().manual_seed(0)
    neighbors = ops.submanifold_kernel_map(sites.indices, sites.spatial_shape, 3)
    inverse = neighbors.flip(1).contiguous()
    weight = torch.randn(27, CHANNELS, CHANNELS, generator=generator) * 0.05
    layer = SpikeSparseConvolution(3, CHANNELS, CHANNELS, 3, subm=True, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight.permute(2, 0, 1).reshape(CHANNELS, 3, 3, 3, CHANNELS))
    ordinary = SubMConv3d(CHANNELS, CHANNELS, 3, bias=False)
    ordinary.load_state_dict(layer.state_dict())
    rates = (0.10,) if quick else FIRING_RATES
    cases = []
    for rate in rates:
        spikes = spikes_at(rate, sites.indices.shape[0], generator)
        shape = f'SubM k3 {CHANNELS}->{CHANNELS}, {sites.label}'
        cases.append((f'{shape}, binary spikes {rate:.0%}', spikes, dict()))
        if not quick and rate in (0.10, 0.50):
            tensor = SparseTensor(spikes, sites.indices, sites.spatial_shape, 1)
            cases.append((f'{shape}, binary spikes {rate:.0%}, layer auto vs SubMConv3d', spikes,
                          dict(layers=(layer, ordinary), tensor=tensor)))
    if not quick:
        spikes = spikes_at(0.10, sites.indices.shape[0], generator, max_spikes=4)
        cases.append((f'SubM k3 {CHANNELS}->{CHANNELS}, {sites.label}, multi-spikes 1-4 at 10%', spikes, dict()))
    return cases, weight, neighbors, inverse


def print_table(rows):
    header = ['case', 'firing', 'ours ms', 'peer ms', 'bitwise equal', 'spread', 'speedup', 'ratio']
    table = [[row['case'].removesuffix(' (time)'), f'{row["firing_rate"]:.1%}', f'{row["ours_ms"]:.1f}',
              f'{row["peer_ms"]:.1f}', 'yes' if row['match'] else 'NO',
              f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["speedup"]:.2f}x',
              f'{row["ratio"]:.2f}'] for row in rows]
    protocol.print_table(header, table)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='binary spikes at 10% only (under 60 s on 2 cores)')
    parser.add_argument('--threads', type=int, nargs='+', default=[torch.get_num_threads()],
                        help='CPU thread counts to run (default: the current torch thread count)')
    parser.add_argument('--json', type=Path, help='also write the results as JSON to this path')
    parser.add_argument('--device', choices=['cpu'], default='cpu', help='the event-driven kernel is CPU-only')
    return parser.parse_args()


def main():
    args = parse_args()
    rounds = 3 if args.quick else 5
    cpu = protocol.cpu_name()
    threads = args.threads[0] if len(args.threads) == 1 else args.threads
    print(f'spiking benchmark{" (quick)" if args.quick else ""}: ours = event-driven spike_sparse_conv, '
          f'peer = {PEER}')
    print(f'machine: {os.cpu_count()} cores, {cpu}; device cpu; threads {args.threads}; load average '
          f'{os.getloadavg()[0]:.2f} at start')
    print(f'versions: sparsevision {sparsevision.__version__}, torch {torch.__version__}, python '
          f'{platform.python_version()}; {ops.extension_info()}')
    print(f'float32 forward; {rounds} rounds of best-of-{REPETITIONS}; match = bitwise equal outputs; '
          'ratio = ours/peer time, median over rounds (lower is better)\n')
    cases, weight, neighbors, inverse = all_cases(args.quick)
    previous_threads = torch.get_num_threads()
    try:
        rows = [run_case(name, spikes, weight, neighbors, inverse, count, rounds, **extra)
                for count in args.threads for name, spikes, extra in cases]
    finally:
        torch.set_num_threads(previous_threads)
    print_table(rows)
    print(f'\nload average {os.getloadavg()[0]:.2f} at end (above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'spiking', PEER, 'cpu', threads, cpu, None, rows)
    if not all(row['match'] for row in rows):
        sys.exit('outputs differ between the event-driven and the dense-site convolution')


if __name__ == '__main__':
    main()
