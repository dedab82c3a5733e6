"""Benchmark neighbourhood attention (``sparsevision.ops.na2d``, the indexed-attention kernel) against its peers.

Cases are NAT/DiNAT stage shapes: 7x7 windows on 56x56 tokens with 64 channels (2 heads) and on 28x28 tokens with
128 channels (4 heads), batch 1, float32, forward (``fwd``) and forward+backward (``fwd+bwd``: the output and the
gradients of query, key and value). Peers, each in its own row:

- ``window``: Swin-style window attention (7x7 non-overlapping windows, ``scaled_dot_product_attention`` per window),
  the cost bar NA is held to. It is another function, so its outputs are not compared (``match`` is ``-``).
- ``flex``: ``torch.compile(flex_attention)`` with a block mask of the same clamped windows (the path NATTEN 0.20
  leaves to CPU users). Same function: outputs compared. Compiled once, before timing. Not in ``--quick``; forward
  only on CPU (flex_attention has no CPU backward).
- ``gather``: the pure-PyTorch formulation (``sparsevision.ops.reference.indexed_attention``: gather the keys and
  values of every window, einsum, softmax). Same function: outputs compared.

BiFormer: ``BiLevelRoutingAttention`` at its stage-1 (56x56, C=64, 2 heads, 7x7 regions, top-1) and stage-2
(28x28, C=128, 4 heads, top-4) shapes against the official formulation (``gathered_routing_attention``: the routed
regions' keys and values gathered into per-region copies, then dense attention; written from the paper), same
weights: outputs compared.

Voxel attention: ``SubMAttention3d`` (64 channels, 4 heads, 3x3x3 neighbourhood, a bias per offset) against
``SubMConv3d`` 64->64 k3, forward, on the ray-cast street scene of ``sparse_conv.py`` (kernel map built before timing,
shared by both). Another function: the row measures cost, not agreement.

``saved MB``: the activations autograd keeps for the backward (each storage once; parameters and the input left
out), measured with ``torch.autograd.graph.saved_tensors_hooks``, for the BiFormer fwd+bwd rows.

``ratio`` is ours/peer time: lower is better, below 1 means ours is faster (the median of per-round ratios; rounds
alternate which side runs first, each side best of 3 repetitions; ``spread`` is their min-max). Follows
``/work/shared/BENCHMARKS.md``.

Usage::

    python tools/benchmark/sparse_attention.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda]
"""
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from sparsevision.ops import na2d, reference
from sparsevision.ops.neighborhood import window_arguments, window_index

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)
from scenes import street_scene_or_stand_in  # noqa: E402  (tools/benchmark/scenes.py)

KERNEL = 7
SHAPES = [(56, 64, 2), (28, 128, 4)]   # (side, channels, heads)
ROUTING_SHAPES = [(56, 64, 2, 1), (28, 128, 4, 4)]   # BiFormer stages 1 and 2: (side, channels, heads, topk)
REPETITIONS = 3
TOLERANCE = 1e-4   # max abs difference of outputs and gradients, float32


@dataclass
class Case:
    name: str
    ours: Callable[[], tuple]
    peer: Callable[[], tuple]
    same_function: bool
    saved_bytes: Optional[Tuple[int, int]] = None   # activations kept for the backward: ours, peer


def saved_activation_bytes(function, excluded) -> int:
    """Bytes of the tensors autograd keeps for the backward of ``function()``, each storage once, leaving out the
    storages of ``excluded`` tensors (the parameters and the input, which both sides keep)."""
    skip = {tensor.untyped_storage().data_ptr() for tensor in excluded}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(storages.values())


def window_attention(query, key, value):
    """Swin-style attention inside non-overlapping KERNEL x KERNEL windows of ``[B, H, W, heads, D]`` tensors."""
    batch, side, _, heads, dim = query.shape
    windows = side // KERNEL

    def split(tensor):
        tensor = tensor.reshape(batch, windows, KERNEL, windows, KERNEL, heads, dim)
        return tensor.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, KERNEL * KERNEL, dim)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    out = out.reshape(batch, windows, windows, heads, KERNEL, KERNEL, dim).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(batch, side, side, heads, dim)


def gather_attention(query, key, value):
    """NA in plain PyTorch: the reference of the indexed-attention op on the same window index."""
    batch, side, _, heads, dim = query.shape
    grid = (side, side)
    index, _ = window_index(grid, *window_arguments(grid, KERNEL, 1, False), batch, query.device)
    rows = batch * side * side
    out, _ = reference.indexed_attention(query.reshape(rows, heads, dim), key.reshape(rows, heads, dim),
                                         value.reshape(rows, heads, dim), index, None, dim ** -0.5)
    return out.reshape(query.shape)


def flex_neighborhood_attention(side: int, device: str):
    """``torch.compile(flex_attention)`` with NA's clamped 7x7 window as its block mask, on ``[B, heads, N, D]``."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def in_window(batch, head, query, key):
        query_row, query_column, key_row, key_column = query // side, query % side, key // side, key % side
        row_start = torch.clamp(query_row - KERNEL // 2, 0, side - KERNEL)
        column_start = torch.clamp(query_column - KERNEL // 2, 0, side - KERNEL)
        return ((key_row >= row_start) & (key_row < row_start + KERNEL) & (key_column >= column_start)
                & (key_column < column_start + KERNEL))

    mask = create_block_mask(in_window, None, None, side * side, side * side, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def attend(query, key, value):
        batch, _, _, heads, dim = query.shape
        flat = [tensor.reshape(batch, side * side, heads, dim).transpose(1, 2) for tensor in (query, key, value)]
        return compiled(*flat, block_mask=mask).transpose(1, 2).reshape(query.shape)

    return attend


def forward_backward(attention, tensors, grad):
    out = attention(*tensors)
    return (out, *torch.autograd.grad(out, tensors, grad))


def make_cases(side, channels, heads, quick, device):
    generator = torch.Generator().manual_seed(side)
    dim = channels // heads
    tensors = [torch.randn(1, side, side, heads, dim, generator=generator).to(device).requires_grad_()
               for _ in range(3)]
    grad = torch.randn(1, side, side, heads, dim, generator=generator).to(device)
    shape = f'{side}x{side} C={channels} heads={heads} k={KERNEL}'

    def ours(*arguments):
        return na2d(*arguments, KERNEL)

    peers = [('window', window_attention, False), ('gather', gather_attention, True)]
    if not quick:
        peers.insert(1, ('flex', flex_neighborhood_attention(side, device), True))
    plain = [tensor.detach() for tensor in tensors]
    cases = []
    for label, peer, same in peers:
        cases.append(Case(f'NA fwd vs {label}, {shape}', lambda: (ours(*plain),), lambda peer=peer: (peer(*plain),),
                          same))
        if label == 'flex' and device == 'cpu':
            continue   # flex_attention has no CPU backward
        cases.append(Case(f'NA fwd+bwd vs {label}, {shape}', lambda: forward_backward(ours, tensors, grad),
                          lambda peer=peer: forward_backward(peer, tensors, grad), same))
    return cases


def routing_attention_cases(side, channels, heads, topk, device):
    """BiLevelRoutingAttention against the gathered formulation, forward and forward+backward."""
    from sparsevision.models.layers import BiLevelRoutingAttention
    from sparsevision.models.layers.routing_attention import gathered_routing_attention

    torch.manual_seed(side)
    layer = BiLevelRoutingAttention(channels, num_heads=heads, n_win=7, topk=topk).to(device)
    x = torch.randn(1, side, side, channels, device=device, requires_grad=True)
    grad = torch.randn(1, side, side, channels, device=device)
    shape = f'{side}x{side} C={channels} heads={heads} 7x7 regions top-{topk}'

    def peer(t):
        return gathered_routing_attention(layer, t)

    def train_step(attention):
        out = attention(x)
        return (out, *torch.autograd.grad(out, [x, *layer.parameters()], grad))

    def inference(attention):
        with torch.no_grad():
            return (attention(x),)

    kept = [x, *layer.parameters()]
    saved = (saved_activation_bytes(lambda: layer(x), kept), saved_activation_bytes(lambda: peer(x), kept))
    return [Case(f'BiFormer routing attention fwd vs gather, {shape}', lambda: inference(layer),
                 lambda: inference(peer), True),
            Case(f'BiFormer routing attention fwd+bwd vs gather, {shape}', lambda: train_step(layer),
                 lambda: train_step(peer), True, saved)]


def voxel_attention_case(device):
    """SubMAttention3d against SubMConv3d 64->64 on the street scene, forward, the shared kernel map built first."""
    from sparsevision.sparse import SparseTensor, SubMAttention3d, SubMConv3d

    sites, note = street_scene_or_stand_in()
    features = torch.randn(sites.indices.shape[0], 64, generator=torch.Generator().manual_seed(0))
    x = SparseTensor(features.to(device), sites.indices.to(device), sites.spatial_shape, 1)
    attention, convolution = SubMAttention3d(64, 4).to(device).eval(), SubMConv3d(64, 64, 3).to(device).eval()
    with torch.no_grad():
        convolution(x)   # builds the map both layers use

    def run(layer):
        with torch.no_grad():
            return (layer(x).features,)

    return Case(f'voxel attention (SubMAttention3d 64ch 4 heads k3) fwd vs SubMConv3d 64->64 fwd, {sites.label} '
                f'({note.split(" (")[0]})', lambda: run(attention), lambda: run(convolution), False)


def calls_for(function, target_s: float, device: str) -> int:
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < 0.05:
        function()
        calls += 1
    protocol.synchronize(device)
    return max(1, round(target_s / ((time.perf_counter() - start) / calls)))


def max_abs_diff(ours, peer) -> Optional[float]:
    return max((a.detach() - b.detach()).abs().max().item() for a, b in zip(ours, peer, strict=True))


def run_case(case: Case, threads: int, rounds: int, target_s: float, device: str) -> dict:
    torch.set_num_threads(threads)
    difference = max_abs_diff(case.ours(), case.peer()) if case.same_function else None
    ours_calls, peer_calls = calls_for(case.ours, target_s, device), calls_for(case.peer, target_s, device)
    ratios, ours_times, peer_times = [], [], []
    for number in range(rounds):
        sides = [(case.ours, ours_calls, ours_times), (case.peer, peer_calls, peer_times)]
        for function, calls, times in (sides if number % 2 == 0 else sides[::-1]):
            times.append(protocol.best_time(function, calls, REPETITIONS, device))
        ratios.append(ours_times[-1] / peer_times[-1])
    row = {'case': f'{case.name}, {threads} thread{"s" if threads > 1 else ""} (time)', 'threads': threads,
           'ours_ms': 1e3 * statistics.median(ours_times), 'peer_ms': 1e3 * statistics.median(peer_times),
           'ratio': statistics.median(ratios), 'rounds': ratios,
           'match': None if difference is None else difference <= TOLERANCE, 'max_abs_diff': difference}
    if case.saved_bytes is not None:
        row['saved_mb_ours'], row['saved_mb_peer'] = (size / 2**20 for size in case.saved_bytes)
    return row


def main():
    parser = protocol.argument_parser(__doc__.splitlines()[0], 'the window and gather peers only, 3 rounds')
    args = parser.parse_args()
    print('sparse_attention benchmark' + (' (quick)' if args.quick else ''))
    cpu, gpu = protocol.describe_machine(args.device, args.threads)
    print(f'versions: torch {torch.__version__}; float32, batch 1 (on CUDA: the correctness-first kernel, untiled); '
          f'match = max abs diff <= {TOLERANCE:g} (outputs and gradients), "-" where the peer computes another '
          'function; ratio = ours/peer time (lower is better)\n')
    started = time.perf_counter()
    cases = ([case for shape in SHAPES for case in make_cases(*shape, args.quick, args.device)]
             + [case for shape in ROUTING_SHAPES for case in routing_attention_cases(*shape, args.device)]
             + [voxel_attention_case(args.device)])
    rounds, target_s = (3, 0.1) if args.quick else (5, 0.3)
    rows = [run_case(case, threads, rounds, target_s, args.device) for threads in args.threads for case in cases]
    table = [[row['case'], f'{row["ours_ms"]:.2f}', f'{row["peer_ms"]:.2f}',
              f'{row["saved_mb_ours"]:.1f} / {row["saved_mb_peer"]:.1f}' if 'saved_mb_ours' in row else '-',
              '-' if row['match'] is None else f'{"yes" if row["match"] else "NO"} ({row["max_abs_diff"]:.1e})',
              f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["ratio"]:.2f}'] for row in rows]
    protocol.print_table(['case', 'ours ms', 'peer ms', 'saved MB ours / peer', 'match', 'spread', 'ratio'], table)
    print(f'\ntotal {time.perf_counter() - started:.0f} s')
    if args.json:
        protocol.write_json(args.json, 'sparse_attention', 'window attention (SDPA), flex_attention, torch gather',
                            args.device, args.threads, cpu, gpu, rows)
    if not all(row['match'] in (None, True) for row in rows):
        sys.exit('outputs differ from a peer computing the same function')


if __name__ == '__main__':
    main()
