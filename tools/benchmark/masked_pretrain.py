"""Benchmark the sparse masked encoder against the dense-masked emulation (SparK's own way).

Ours: the encoder run with ``encode_masked(..., sparse=True)``: every layer
computes at the visible sites only (sparse convolutions of the engine,
statistics over visible rows). Peer: the same backbone, weights, images and mask
with ``sparse=False``: dense convolutions on the masked image, re-masked after
every layer, batch norm over the gathered visible rows — what SparK's
``encoder.py`` does. Both are timed for forward + backward of the loss
``sum(mean(feature ** 2))`` over the four stage outputs (float32), at 224x224 with
32x32 patches (a 7x7 grid) hidden at mask ratios 0.6 and 0.75, for a
ResNet-50 (ours, ImageNet stem) and ConvNeXt V2-Tiny (timm, with GRN).

``ratio`` is ours/peer time: lower is better; ``speedup`` = 1 / ratio. It is the
median of per-round ratios (rounds alternate which side runs first); ``spread``
is their min-max range. ``match``: on the same inputs in float64, the largest
difference of any stage output or weight gradient between the two paths,
relative to that tensor's largest magnitude, is under ``MATCH_TOLERANCE``.
Follows ``/work/shared/BENCHMARKS.md``.

Usage::

    python tools/benchmark/masked_pretrain.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda]
"""
import copy
import os
import platform
import statistics
import sys

import torch

import sparsevision
from sparsevision.models.backbones import ResNet, TimmBackbone
from sparsevision.models.masked_pretraining import encode_masked, random_patch_mask

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)

IMAGE_SIZE = 224
GRID = (7, 7)
REPETITIONS = 3
MATCH_TOLERANCE = 1e-9
PEER = 'dense-masked emulation (SparK encoder.py style: dense conv + re-mask, BN over visible rows)'
ENCODERS = {
    'ResNet-50': lambda: ResNet(depth=50, out_indices=(0, 1, 2, 3)),
    'ConvNeXt V2-T': lambda: TimmBackbone('convnextv2_tiny'),
}


def forward_backward(backbone, images, visible, sparse):
    """Stage outputs (dense, zero where masked) and weight gradients of one masked training step."""
    backbone.zero_grad(set_to_none=True)
    maps = encode_masked(backbone, images, visible, sparse)
    sum(feature_map.payload.square().mean() * feature_map.payload.shape[0] for feature_map in maps).backward()
    return maps


def relative_difference(backbone, images, visible) -> float:
    """Largest difference between the two paths in float64, relative to each tensor's scale (outputs and gradients).

    Checked in float64 because at random initialisation batch norm over few visible sites amplifies float32
    rounding: both float32 paths then sit up to ~20 % off the float64 weight gradients of the last stages.
    """
    backbone = copy.deepcopy(backbone).double()
    results = []
    for sparse in (True, False):
        backbone.zero_grad(set_to_none=True)
        maps = encode_masked(backbone, images.double(), visible, sparse)
        dense = [feature_map.to_dense() for feature_map in maps]
        weights = [torch.linspace(-1, 1, d.numel(), dtype=d.dtype, device=d.device).reshape(d.shape) for d in dense]
        sum((d * w).sum() for d, w in zip(dense, weights)).backward()
        gradients = [p.grad.clone() for p in backbone.parameters() if p.grad is not None]
        results.append([d.detach() for d in dense] + gradients)
    return max(((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item() for a, b in zip(*results))


def run_case(name, mask_ratio, batch, threads, rounds, device):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = ENCODERS[name]().to(device)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)
    visible = random_patch_mask(batch, GRID, mask_ratio, device, generator)
    difference = relative_difference(backbone, images, visible)
    ours = lambda: forward_backward(backbone, images, visible, True)  # noqa: E731
    peer = lambda: forward_backward(backbone, images, visible, False)  # noqa: E731
    ours(), peer()   # warm-up
    ours_times, peer_times = [], []
    for round_number in range(rounds):
        sides = [(ours_times, ours), (peer_times, peer)]
        for times, function in sides[::-1] if round_number % 2 else sides:
            times.append(protocol.best_time(function, 1, REPETITIONS, device))
    ratios = [mine / theirs for mine, theirs in zip(ours_times, peer_times)]
    ours_ms = statistics.median(ours_times) * 1e3
    return {
        'case': f'{name} fwd+bwd, B={batch} {IMAGE_SIZE}x{IMAGE_SIZE}, mask {mask_ratio}, '
                f'{threads} thread{"s" if threads > 1 else ""} (time)',
        'threads': threads,
        'ours_ms': ours_ms,
        'peer_ms': statistics.median(peer_times) * 1e3,
        'ratio': statistics.median(ratios),
        'speedup': 1 / statistics.median(ratios),
        'rounds': ratios,
        'match': difference <= MATCH_TOLERANCE,
        'max_abs_diff': difference,
        'images_per_s_ours': batch / ours_ms * 1e3,
    }


def print_table(rows):
    header = ['case', 'ours ms', 'peer ms', 'match (max rel diff)', 'spread', 'speedup', 'ratio']
    table = [[row['case'].removesuffix(' (time)'), f'{row["ours_ms"]:.1f}', f'{row["peer_ms"]:.1f}',
              f'{"yes" if row["match"] else "NO"} ({row["max_abs_diff"]:.1e})',
              f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["speedup"]:.2f}x',
              f'{row["ratio"]:.2f}'] for row in rows]
    protocol.print_table(header, table)


def parse_args():
    parser = protocol.argument_parser(__doc__.split('\n\n')[0],
                                      'ResNet-50 at mask 0.6, B=2 only (under 60 s on 2 cores)')
    parser.add_argument('--batch', type=int, default=8, help='images per batch (default 8; --quick uses 2)')
    return parser.parse_args()


def main():
    args = parse_args()
    rounds, batch = (3, 2) if args.quick else (3, args.batch)
    cases = [('ResNet-50', 0.6)] if args.quick else [(name, ratio) for name in ENCODERS for ratio in (0.6, 0.75)]
    threads = args.threads[0] if len(args.threads) == 1 else args.threads
    print(f'masked_pretrain benchmark{" (quick)" if args.quick else ""}: ours = sparse masked encoder, peer = {PEER}')
    cpu, gpu = protocol.describe_machine(args.device, args.threads)
    print(f'versions: sparsevision {sparsevision.__version__}, torch {torch.__version__}, python '
          f'{platform.python_version()}; {sparsevision.ops.extension_info()}')
    print(f'timed in float32; {rounds} rounds of best-of-{REPETITIONS}; match = max relative diff of outputs and '
          f'weight gradients in float64 <= {MATCH_TOLERANCE:g}; '
          'ratio = ours/peer time, median over rounds (lower is better)\n')
    previous_threads = torch.get_num_threads()
    try:
        rows = [run_case(name, ratio, batch, count, rounds, args.device) for count in args.threads
                for name, ratio in cases]
    finally:
        torch.set_num_threads(previous_threads)
    print_table(rows)
    print(f'\nload average {os.getloadavg()[0]:.2f} at end (above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'masked_pretrain', PEER, args.device, threads, cpu, gpu, rows)
    if not all(row['match'] for row in rows):
        sys.exit('outputs differ between the sparse and the dense-masked encoder')


if __name__ == '__main__':
    main()
