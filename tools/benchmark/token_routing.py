"""Benchmark sparsevision token routing against the pure-PyTorch chain.

Ours: ``sparsevision.ops.gather_tokens`` / ``scatter_tokens`` / ``merge_tokens`` /
``select_tokens`` as users call them (argument, index-range and size checks
included). Peer: the pure-PyTorch references in ``sparsevision.ops.reference``
(``torch.gather`` / ``scatter_add_`` with an expanded index; for the merge ToMe's
three passes: ``index_add_`` of ``tokens * sizes``, ``index_add_`` of ``sizes``,
divide), and for the selection the ``topk`` + ``sort`` + ``cat`` chain, i.e. what a
model writes without the extension. Cases are ViT-S/16-like: N=197
tokens, C=384 channels, K=round(0.7 N)=138 kept tokens, batch 1, 8 and 32;
ToMe-like cases whose index holds many duplicates (197 tokens merged into 99
rows and unmerged back); and ToMe's size-weighted merge of r=13 tokens per
block (197 tokens into 184 slots), forward and forward+backward; and the
per-sample top-k selection of K=137 of M=196 patch scores behind one class token.

``ratio`` is ours/peer time: lower is better, below 1 means ours is faster. It is
the median of per-round ratios (rounds alternate which side runs first);
``spread`` is their min-max range. Follows ``/work/shared/BENCHMARKS.md`` (same
process, same inputs, float32, best of 5 repetitions per round). Beyond its
schema, every JSON row has ``threads`` and ``gbps_ours`` (bytes read and
written per call over our time), and ``machine.threads`` is a list when several
thread counts ran.

Usage::

    python tools/benchmark/token_routing.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda]
"""
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

import sparsevision
from sparsevision.ops import extension_info, gather_tokens, merge_tokens, reference, scatter_tokens, select_tokens

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)

NUM_TOKENS = 197
CHANNELS = 384
KEPT = round(0.7 * NUM_TOKENS)
MERGED = 99
TOME_R = 13
NUM_PREFIX = 1
SELECTED = round(0.7 * (NUM_TOKENS - NUM_PREFIX))
WARMUP_S = 0.05
REPETITIONS = 5
MATCH_TOLERANCE = 1e-6
PEER = ('pure PyTorch (torch.gather / scatter_add_; merge: index_add_ of x*s, index_add_ of s, divide; '
        'select: topk + sort + cat)')


@dataclass
class Case:
    """One benchmark row: two callables returning comparable tensors, and the bytes one call moves."""

    name: str
    ours: Callable[[], tuple]
    peer: Callable[[], tuple]
    bytes_moved: int


def random_index(batch, count, high, duplicates, generator):
    """``[batch, count]`` rows in ``[0, high)``: distinct (a random top-k) or drawn with replacement."""
    if duplicates:
        return torch.randint(0, high, (batch, count), generator=generator)
    return torch.stack([torch.randperm(high, generator=generator)[:count] for _ in range(batch)])


def gather_forward_backward(gather, tokens, index, grad):
    """Gather, then the gradient of ``sum(gather(tokens) * grad)`` with respect to ``tokens``."""
    out = gather(tokens, index)
    return out, torch.autograd.grad(out, tokens, grad)[0]


def tome_index(batch, num_tokens, merged, generator):
    """ToMe's bipartite merge of ``merged`` tokens: a ``[batch, num_tokens]`` index into ``num_tokens - merged`` slots.

    Even tokens form set A, odd tokens set B; ``merged`` random tokens of A other
    than the class token (position 0) move into random tokens of B. Slots follow
    ToMe's output order: A's kept tokens, then B.
    """
    set_a, set_b = torch.arange(0, num_tokens, 2), torch.arange(1, num_tokens, 2)
    num_kept = len(set_a) - merged
    rows = []
    for _ in range(batch):
        moved = 1 + torch.randperm(len(set_a) - 1, generator=generator)[:merged]
        kept = torch.ones(len(set_a), dtype=torch.bool)
        kept[moved] = False
        index = torch.empty(num_tokens, dtype=torch.long)
        index[set_a[kept]] = torch.arange(num_kept)
        index[set_b] = num_kept + torch.arange(len(set_b))
        index[set_a[moved]] = num_kept + torch.randint(0, len(set_b), (merged,), generator=generator)
        rows.append(index)
    return torch.stack(rows)


def merge_forward_backward(merge, tokens, sizes, index, num_out, grad):
    """Merge, then the gradient of ``sum(merged * grad)`` with respect to ``tokens`` (sizes need none, as in ToMe)."""
    merged, merged_sizes = merge(tokens, sizes, index, num_out)
    return merged, merged_sizes, torch.autograd.grad(merged, tokens, grad)[0]


def make_merge_cases(batch, device):
    """ToMe's merge of ``TOME_R`` tokens: forward, and forward+backward."""
    generator = torch.Generator().manual_seed(batch)
    num_out = NUM_TOKENS - TOME_R
    tokens = torch.randn(batch, NUM_TOKENS, CHANNELS, generator=generator).to(device)
    sizes = torch.randint(1, 5, (batch, NUM_TOKENS), generator=generator).float().to(device)
    index = tome_index(batch, NUM_TOKENS, TOME_R, generator).to(device)
    grad = torch.randn(batch, num_out, CHANNELS, generator=generator).to(device)
    leaf = tokens.clone().requires_grad_()
    element = tokens.element_size()
    token_bytes = batch * NUM_TOKENS * (CHANNELS + 2) * element
    merged_bytes = batch * num_out * (CHANNELS + 1) * element
    shape = f'B={batch} N={NUM_TOKENS} C={CHANNELS} -> {num_out}, ToMe r={TOME_R}'
    return [
        Case(f'merge fwd, {shape}', lambda: merge_tokens(tokens, sizes, index, num_out),
             lambda: reference.merge_tokens(tokens, sizes, index, num_out), token_bytes + merged_bytes),
        Case(f'merge fwd+bwd, {shape}', lambda: merge_forward_backward(merge_tokens, leaf, sizes, index, num_out, grad),
             lambda: merge_forward_backward(reference.merge_tokens, leaf, sizes, index, num_out, grad),
             2 * (token_bytes + merged_bytes)),
    ]


def topk_chain(scores, keep, num_prefix):
    """The pure-PyTorch selection: ``topk``, ``sort`` the kept positions, ``cat`` the prefix in front."""
    chosen = scores.topk(keep, dim=1).indices.sort(dim=1).values + num_prefix
    prefix = torch.arange(num_prefix, device=scores.device).expand(scores.shape[0], -1)
    return torch.cat([prefix, chosen], dim=1)


def make_select_case(batch, device):
    """Keep the ``SELECTED`` highest of ``NUM_TOKENS - NUM_PREFIX`` random (tie-free) patch scores per sample."""
    generator = torch.Generator().manual_seed(batch)
    num_scored = NUM_TOKENS - NUM_PREFIX
    scores = torch.randn(batch, num_scored, generator=generator).to(device)
    bytes_moved = batch * (num_scored * scores.element_size() + (NUM_PREFIX + SELECTED) * 8)
    return Case(f'select fwd, B={batch} M={num_scored} K={SELECTED} prefix {NUM_PREFIX}',
                lambda: (select_tokens(scores, SELECTED, NUM_PREFIX),),
                lambda: (topk_chain(scores, SELECTED, NUM_PREFIX),), bytes_moved)


def make_cases(batch, num_tokens, count, duplicates, label, device):
    """The gather, scatter and gather forward+backward cases of one shape."""
    generator = torch.Generator().manual_seed(batch * 1000 + count)
    tokens = torch.randn(batch, num_tokens, CHANNELS, generator=generator).to(device)
    rows = torch.randn(batch, count, CHANNELS, generator=generator).to(device)
    index = random_index(batch, count, num_tokens, duplicates, generator).to(device)
    leaf = tokens.clone().requires_grad_()
    element = tokens.element_size()
    routed_bytes = batch * count * CHANNELS * element
    grid_bytes = batch * num_tokens * CHANNELS * element
    shape = f'B={batch} N={num_tokens} K={count} C={CHANNELS}{label}'
    return [
        Case(f'gather fwd, {shape}', lambda: (gather_tokens(tokens, index),),
             lambda: (reference.gather_tokens(tokens, index),), 2 * routed_bytes),
        Case(f'scatter fwd, {shape}', lambda: (scatter_tokens(rows, index, num_tokens),),
             lambda: (reference.scatter_tokens(rows, index, num_tokens),), routed_bytes + grid_bytes),
        Case(f'gather fwd+bwd, {shape}', lambda: gather_forward_backward(gather_tokens, leaf, index, rows),
             lambda: gather_forward_backward(reference.gather_tokens, leaf, index, rows),
             3 * routed_bytes + grid_bytes),
    ]


def all_cases(quick, device):
    """The headline shapes (B=32: keep 70%, ToMe merge, selection) in quick mode, else every batch size and ToMe-like
    shape."""
    shapes = [(32, NUM_TOKENS, KEPT, False, ', keep 70%')]
    batches = [32]
    if not quick:
        shapes = ([(batch, NUM_TOKENS, KEPT, False, ', keep 70%') for batch in (1, 8, 32)]
                  + [(32, MERGED, NUM_TOKENS, True, ', ToMe duplicates')])
        batches = [1, 8, 32]
    return ([case for shape in shapes for case in make_cases(*shape, device)]
            + [case for batch in batches for case in make_merge_cases(batch, device)]
            + [make_select_case(batch, device) for batch in batches])


def calls_per_repetition(function, device, target_s):
    """How many back-to-back calls fill about ``target_s`` (also the warm-up)."""
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < WARMUP_S:
        function()
        calls += 1
    protocol.synchronize(device)
    per_call = (time.perf_counter() - start) / calls
    return max(1, round(target_s / per_call))


def max_abs_diff(ours, peer):
    return max((a.detach().double() - b.detach().double()).abs().max().item() for a, b in zip(ours, peer, strict=True))


def run_case(case, threads, rounds, target_s, device):
    torch.set_num_threads(threads)
    diff = max_abs_diff(case.ours(), case.peer())
    ours_calls = calls_per_repetition(case.ours, device, target_s)
    peer_calls = calls_per_repetition(case.peer, device, target_s)
    ours_times, peer_times = [], []
    for round_number in range(rounds):
        timings = [(ours_times, case.ours, ours_calls), (peer_times, case.peer, peer_calls)]
        for times, function, calls in timings[::-1] if round_number % 2 else timings:
            times.append(protocol.best_time(function, calls, REPETITIONS, device))
    ratios = [ours / peer for ours, peer in zip(ours_times, peer_times)]
    ours_ms = statistics.median(ours_times) * 1e3
    return {
        'case': f'{case.name}, {threads} thread{"s" if threads > 1 else ""} (time)',
        'threads': threads,
        'ours_ms': ours_ms,
        'peer_ms': statistics.median(peer_times) * 1e3,
        'ratio': statistics.median(ratios),
        'rounds': ratios,
        'match': diff <= MATCH_TOLERANCE,
        'max_abs_diff': diff,
        'gbps_ours': case.bytes_moved / ours_ms / 1e6,
    }


def print_table(rows):
    header = ['case', 'ours ms', 'peer ms', 'ours GB/s', 'match (max abs diff)', 'spread', 'ratio']
    table = [[row['case'].removesuffix(' (time)'), f'{row["ours_ms"]:.4f}', f'{row["peer_ms"]:.4f}',
              f'{row["gbps_ours"]:.1f}', f'{"yes" if row["match"] else "NO"} ({row["max_abs_diff"]:.1e})',
              f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["ratio"]:.2f}'] for row in rows]
    protocol.print_table(header, table)


def parse_args():
    parser = protocol.argument_parser(__doc__.split('\n\n')[0], 'headline cases only (B=32), under 60 s on 2 cores')
    return parser.parse_args()


def main():
    args = parse_args()
    rounds, target_s = (3, 0.002) if args.quick else (7, 0.01)
    threads = args.threads[0] if len(args.threads) == 1 else args.threads
    print(f'token_routing benchmark{" (quick)" if args.quick else ""}: ours = sparsevision.ops, peer = {PEER}')
    cpu, gpu = protocol.describe_machine(args.device, args.threads)
    print(f'versions: sparsevision {sparsevision.__version__}, torch {torch.__version__}, python '
          f'{platform.python_version()}; {extension_info()}')
    print(f'float32; {rounds} rounds of best-of-{REPETITIONS}; match = max abs diff <= {MATCH_TOLERANCE:g}; '
          'ratio = ours/peer time, median over rounds (lower is better)\n')
    cases = all_cases(args.quick, args.device)
    previous_threads = torch.get_num_threads()
    try:
        rows = [run_case(case, count, rounds, target_s, args.device) for count in args.threads for case in cases]
    finally:
        torch.set_num_threads(previous_threads)
    print_table(rows)
    print(f'\nload average {os.getloadavg()[0]:.2f} at end (above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'token_routing', PEER, args.device, threads, cpu, gpu, rows)
    if not all(row['match'] for row in rows):
        sys.exit('outputs differ between ours and the peer')


if __name__ == '__main__':
    main()
