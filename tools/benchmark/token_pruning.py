"""Benchmark sparsevision's token-pruning ViTs against the dense timm ViT they were made from.

Peer: timm ``vit_small_patch16_224`` (random init, seed 0). Ours: ``from_timm`` copies of it, same weights
(DynamicViT's predictors are random too): EViT, DynamicViT and SpAtten keeping 0.5/0.7/0.9 of the tokens at
blocks 3, 6 and 9, and ToMe merging r = 8 and 13 tokens per block. Inference: eval, ``torch.no_grad``,
float32, the same random images for every model, batch sizes 1, 8 and 32.

On CPU our copies run packed, as ``from_timm`` builds them by default (``pack_linear_layers``: oneDNN weights
packed once; ``--no-pack`` turns it off). To keep the two gains apart, each round also times the dense model with packed
linears: ``vs packed dense`` is the speed-up from token reduction alone, ``ratio`` the one against stock timm.

Per batch size, each round times the dense model and every pruned copy once (best of ``repetitions``), in an
order reversed every other round; ``ratio`` is ours/peer throughput in images/s, so **higher is better**
(above 1 means the pruned copy is faster). It is the median of the per-round ratios; ``spread`` is their
min-max. ``GMACs`` is the analytic count per image (``sparsevision.models.token_pruning.flops.vit_macs``)
and ``ideal`` the dense/pruned MAC ratio, the speed-up pruning could give if time followed MACs.

``match``: the pruned logits are finite, the same method with pruning off (keep 1.0, or r = 0) gives
timm's logits bitwise on the benchmark input, and the packed copy's logits are within 1e-3 of the unpacked
copy's (``packed_max_abs_diff``; rounding only). ``max_abs_diff`` is pruned minus dense logits: information,
not a tolerance (pruning changes the output by design). Follows ``/work/shared/BENCHMARKS.md``. Beyond its
JSON schema, every row has ``threads``, ``batch``, ``method``, ``ours_images_per_s``, ``peer_images_per_s``,
``gmacs_ours``, ``gmacs_peer`` (per image), ``tokens_per_block``, ``packed``, ``packed_dense_images_per_s`` and
``ratio_vs_packed_dense``; ``machine.threads`` is a list when
several thread counts ran.

Usage::

    python tools/benchmark/token_pruning.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda] [--no-pack]
"""
import copy
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List

import timm
import torch
from torch import nn

import sparsevision
from sparsevision.models.layers import pack_linear_layers
from sparsevision.models.token_pruning import from_timm
from sparsevision.models.token_pruning.flops import vit_macs
from sparsevision.ops import extension_info

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)

MODEL_NAME = 'vit_small_patch16_224'
LOCATIONS = (3, 6, 9)
KEEP_RATES = (0.5, 0.7, 0.9)
TOME_R = (8, 13)
BATCHES = (1, 8, 32)
QUICK_KEEP_RATES, QUICK_TOME_R, QUICK_BATCHES = (0.7,), (13,), (1, 8)
PRUNING_OFF = {'evit': dict(keep_rate=1.0), 'dynamicvit': dict(keep_rate=1.0), 'spatten': dict(keep_rate=1.0),
               'tome': dict(r=0)}
PEER = f'timm {timm.__version__} {MODEL_NAME} (dense)'


@dataclass
class Variant:
    """One pruned copy of the dense model."""

    label: str
    method: str
    model: nn.Module          # what is timed: packed when packing is on
    unpacked: nn.Module
    gmacs: float
    tokens_per_block: List[int]


def build_variants(dense: nn.Module, quick: bool, pack: bool) -> List[Variant]:
    keep_rates, tome_r = (QUICK_KEEP_RATES, QUICK_TOME_R) if quick else (KEEP_RATES, TOME_R)
    settings = [(f'{method} keep {rate}', method, dict(keep_rate=rate, locations=LOCATIONS))
                for method in ('evit', 'dynamicvit', 'spatten') for rate in keep_rates]
    settings += [(f'tome r={r}', 'tome', dict(r=r)) for r in tome_r]
    variants = []
    for label, method, arguments in settings:
        model = from_timm(dense, method, pack_linear=False, **arguments).eval()
        macs = vit_macs(model)
        timed = pack_linear_layers(copy.deepcopy(model)) if pack else model
        variants.append(Variant(label, method, timed, model, macs['total'] / 1e9,
                                [entry['tokens'] for entry in macs['per_block']]))
    return variants


def pruning_off_is_exact(dense: nn.Module, images: torch.Tensor, expected: torch.Tensor) -> Dict[str, bool]:
    """Whether each method with pruning off gives the dense logits bitwise."""
    return {method: torch.equal(from_timm(dense, method, **arguments).eval()(images), expected)
            for method, arguments in PRUNING_OFF.items()}


def calls_per_repetition(function, device: str, target_s: float) -> int:
    """Back-to-back calls filling about ``target_s`` (at least one); doubles as the warm-up."""
    function()
    protocol.synchronize(device)
    start = time.perf_counter()
    function()
    protocol.synchronize(device)
    return max(1, round(target_s / (time.perf_counter() - start)))


def time_batch(dense, packed_dense, variants, images, rounds, repetitions, target_s, device):
    """Per-round best seconds per call: ``(dense times, packed dense times, [times of each variant])``.

    Without packing (``packed_dense is dense``) the dense model is timed once and its times returned twice.
    """
    packing = packed_dense is not dense
    models = [dense] + ([packed_dense] if packing else []) + [variant.model for variant in variants]
    functions = [lambda model=model: model(images) for model in models]
    calls = [calls_per_repetition(function, device, target_s) for function in functions]
    times = [[] for _ in functions]
    for round_number in range(rounds):
        order = list(range(len(functions)))
        for position in order[::-1] if round_number % 2 else order:
            times[position].append(protocol.best_time(functions[position], calls[position], repetitions, device))
    return (times[0], times[1], times[2:]) if packing else (times[0], times[0], times[1:])


def run_batch(dense, packed_dense, dense_gmacs, variants, batch, threads, rounds, repetitions, target_s, device):
    torch.set_num_threads(threads)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)).to(device)
    expected = dense(images)
    exact_when_off = pruning_off_is_exact(dense, images, expected)
    dense_times, packed_dense_times, variant_times = time_batch(dense, packed_dense, variants, images, rounds,
                                                                repetitions, target_s, device)
    packed = packed_dense is not dense
    rows = []
    for variant, times in zip(variants, variant_times):
        logits = variant.model(images)
        finite = bool(torch.isfinite(logits).all())
        packed_diff = (logits - variant.unpacked(images)).abs().max().item()
        ratios = [dense_time / time for dense_time, time in zip(dense_times, times)]
        packed_ratios = [dense_time / time for dense_time, time in zip(packed_dense_times, times)]
        ours_s, peer_s = statistics.median(times), statistics.median(dense_times)
        rows.append({
            'case': f'{variant.label}, batch {batch}, {threads} thread{"s" if threads > 1 else ""} (img/s)',
            'threads': threads,
            'batch': batch,
            'method': variant.label,
            'ours_ms': ours_s * 1e3,
            'peer_ms': peer_s * 1e3,
            'ours_images_per_s': batch / ours_s,
            'peer_images_per_s': batch / peer_s,
            'ratio': statistics.median(ratios),
            'rounds': ratios,
            'match': finite and exact_when_off[variant.method] and packed_diff <= 1e-3,
            'finite': finite,
            'exact_when_off': exact_when_off[variant.method],
            'max_abs_diff': (logits - expected).abs().max().item(),
            'gmacs_ours': variant.gmacs,
            'gmacs_peer': dense_gmacs,
            'tokens_per_block': variant.tokens_per_block,
            'packed': packed,
            'packed_max_abs_diff': packed_diff,
            'packed_dense_images_per_s': batch / statistics.median(packed_dense_times),
            'ratio_vs_packed_dense': statistics.median(packed_ratios),
        })
    return rows


def print_table(rows):
    header = ['case', 'dense img/s', 'ours img/s', 'GMACs', 'ideal', 'finite, exact off', 'vs packed dense',
              'spread', 'ratio']
    table = [[row['case'].removesuffix(' (img/s)'), f'{row["peer_images_per_s"]:.1f}',
              f'{row["ours_images_per_s"]:.1f}', f'{row["gmacs_ours"]:.2f}',
              f'{row["gmacs_peer"] / row["gmacs_ours"]:.2f}',
              f'{"yes" if row["finite"] else "NO"}, {"yes" if row["exact_when_off"] else "NO"}',
              f'{row["ratio_vs_packed_dense"]:.2f}' if row['packed'] else '-',
              f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["ratio"]:.2f}'] for row in rows]
    protocol.print_table(header, table)


def parse_args():
    parser = protocol.argument_parser(__doc__.split('\n\n')[0],
                                      'batch 1 and 8, keep 0.7 and ToMe r=13 only, under 60 s on 2 cores')
    parser.add_argument('--no-pack', action='store_true',
                        help='time our copies with plain nn.Linear (no oneDNN packed weights)')
    return parser.parse_args()


def main():
    args = parse_args()
    rounds, repetitions, target_s = (3, 3, 0.02) if args.quick else (3, 5, 0.2)
    batches = QUICK_BATCHES if args.quick else BATCHES
    threads = args.threads[0] if len(args.threads) == 1 else args.threads
    print(f'token_pruning benchmark{" (quick)" if args.quick else ""}: ours = from_timm pruned copies '
          f'(same weights), peer = {PEER}')
    cpu, gpu = protocol.describe_machine(args.device, args.threads)
    print(f'versions: sparsevision {sparsevision.__version__}, torch {torch.__version__}, timm {timm.__version__}, '
          f'python {platform.python_version()}; {extension_info()}')
    pack = args.device == 'cpu' and not args.no_pack
    print(f'random init (seed 0), eval, no_grad, float32; per batch {rounds} rounds, each timing dense'
          f'{", dense with packed linears" if pack else ""} and every pruned copy once (best of {repetitions}, '
          f'order reversed every other round); our copies: {"oneDNN-packed" if pack else "plain"} linear layers')
    torch.manual_seed(0)
    dense = timm.create_model(MODEL_NAME, pretrained=False).eval().to(args.device)
    dense_gmacs = vit_macs(dense)['total'] / 1e9
    print(f'GMACs: analytic per image (dense {dense_gmacs:.2f}); ideal = dense/ours GMACs; '
          'ratio = ours/dense img/s, median over rounds (higher is better)\n')
    previous_threads = torch.get_num_threads()
    variants = build_variants(dense, args.quick, pack)
    packed_dense = pack_linear_layers(copy.deepcopy(dense)) if pack else dense
    try:
        with torch.no_grad():
            rows = [row for count in args.threads for batch in batches
                    for row in run_batch(dense, packed_dense, dense_gmacs, variants, batch, count, rounds,
                                         repetitions, target_s, args.device)]
    finally:
        torch.set_num_threads(previous_threads)
    print_table(rows)
    print(f'\nload average {os.getloadavg()[0]:.2f} at end (above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'token_pruning', PEER, args.device, threads, cpu, gpu, rows)
    if not all(row['match'] for row in rows):
        sys.exit('a pruned output is not finite, or pruning off does not give the dense output')


if __name__ == '__main__':
    main()
