"""Benchmark the whole SparseUNet against the same network built on spconv 2.3.8, side by side in one process.

Ours: ``sparsevision.models.backbones.SparseUNet`` with its defaults (Pointcept SpUNet-v1m1's layout: channels
(32, 64, 128, 256, 256, 128, 96, 96), blocks (2, 3, 4, 6, 2, 2, 2, 2), 4 input channels). Peer: that layout
written against ``spconv.pytorch`` (module names, kernel sizes and ``indice_key`` s of Pointcept's
``spconv_unet_v1m1_base.py``; ``nn.BatchNorm1d``), with our state_dict loaded unchanged (kernel-1 shortcut
weights included: our layers read them as spconv 2.x does).

Input: the street scene of ``scenes.py`` (open3d ray-cast LiDAR sweeps voxelised at 0.1 m; ``--quick``: one
smaller sweep), one batch sample, seeded random ``[N, 4]`` features, on the scene's grid rounded up to a multiple
of 16 per axis (what SparseUNet does itself; Pointcept pads its grid for the same reason). Each call makes a new
sparse tensor, so both libraries build every kernel map inside the timed call.

Rows: ``fwd``: inference, eval mode under ``torch.no_grad``; ``fwd+bwd``: training mode (batch statistics),
output and the gradients of ``sum(out ** 2) / 2`` with respect to the input features and every parameter.

``ratio`` is ours/peer time: lower is better, below 1 means ours is faster (the median of per-round ratios; rounds
alternate which side runs first, each side best of 3 repetitions, 5 for calls under 200 ms; ``spread`` is their
min-max). ``match``: ours against spconv at 1 thread (spconv 2.3.8 races on CPU above 1 thread), max abs diff <=
``TOLERANCE`` * max|spconv| for the output and each gradient: 1e-3 for ``fwd``, 1e-1 for ``fwd+bwd``, where float32
rounding grows through training-mode batch norm over the few sites of the deepest stage: measured against the
float64 result on the full scene, ours deviates by up to 3.7e-2 of a tensor's size and spconv by up to 5.8e-2, so the
two float32 results differ by up to ~6e-2. That both compute the same function is checked first, in float64
(training-mode forward+backward at 1 thread, relative difference <= 1e-9): that is the correctness check.
Above 1 thread, ``spconv = own 1t`` and ``ours = own 1t`` as in ``sparse_conv.py``, whose protocol code this script
reuses.

Peer patches, printed in the header: without CUDA, ``spconv.pytorch.ops.get_current_stream = lambda: 0`` (its CPU
backward asks for a CUDA stream); spconv's bundled OpenMP runtime is set to the same thread count.

``--device cuda``: the same rows on the GPU against a CUDA build of spconv, timed with CUDA events; the float64 check
runs on the CPU (spconv's CUDA kernels have no float64). Without open3d the street scene is replaced by
``scenes.analytic_street_scene``, and the header says so. Follows
``/work/shared/BENCHMARKS.md``; the JSON rows have ``sites`` and no FLOP counts (``pairs`` null).

Usage::

    python tools/benchmark/sparse_unet.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda]
"""
import argparse
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from sparsevision.models.backbones import SparseUNet
from sparsevision.sparse import SparseTensor

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)
import sparse_conv  # noqa: E402  (the protocol's checking and timing; importing it patches spconv's CPU backward)
from scenes import street_scene_or_stand_in  # noqa: E402  (tools/benchmark/scenes.py)

spconv = sparse_conv.spconv_torch
IN_CHANNELS = 4
QUICK_SCENE = dict(sensor_x=(0,), beams=16, azimuths=512)   # one sweep, ~7k sites
TOLERANCE = {'fwd': 1e-3, 'fwd+bwd': 1e-1}
FLOAT64_TOLERANCE = 1e-9


def norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class PeerBlock(spconv.SparseModule):
    """Pointcept's residual block on spconv: two SubM k3 convolutions, a SubM k1 projection when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, indice_key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = norm(out_channels)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = norm(out_channels)
        self.relu = nn.ReLU()
        self.proj = None
        if in_channels != out_channels:
            self.proj = spconv.SparseSequential(spconv.SubMConv3d(in_channels, out_channels, 1, bias=False),
                                                norm(out_channels))

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2(out.replace_feature(self.relu(self.bn1(out.features))))
        shortcut = x.features if self.proj is None else self.proj(x).features
        return out.replace_feature(self.relu(self.bn2(out.features) + shortcut))


class PeerUNet(nn.Module):
    """Pointcept's SpUNet-v1m1 (without its classifier) on spconv."""

    def __init__(self, in_channels: int, base_channels: int = 32, channels=(32, 64, 128, 256, 256, 128, 96, 96),
                 layers=(2, 3, 4, 6, 2, 2, 2, 2)):
        super().__init__()
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, base_channels, 5, bias=False, indice_key='stem'), norm(base_channels),
            nn.ReLU())
        self.down, self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        encoder_width, decoder_width = base_channels, channels[-1]
        for stage in range(len(channels) // 2):
            width, coarser_width = channels[stage], channels[-stage - 2]
            self.down.append(spconv.SparseSequential(
                spconv.SparseConv3d(encoder_width, width, 2, stride=2, bias=False, indice_key=f'spconv{stage + 1}'),
                norm(width), nn.ReLU()))
            self.enc.append(spconv.SparseSequential(OrderedDict(
                (f'block{i}', PeerBlock(width, width, f'subm{stage + 1}')) for i in range(layers[stage]))))
            self.up.append(spconv.SparseSequential(
                spconv.SparseInverseConv3d(coarser_width, decoder_width, 2, bias=False,
                                           indice_key=f'spconv{stage + 1}'),
                norm(decoder_width), nn.ReLU()))
            self.dec.append(spconv.SparseSequential(OrderedDict(
                (f'block{i}', PeerBlock(decoder_width + encoder_width if i == 0 else decoder_width, decoder_width,
                                        f'subm{stage}')) for i in range(layers[-stage - 1]))))
            encoder_width, decoder_width = width, coarser_width

    def forward(self, x):
        x = self.conv_input(x)
        skips = [x]
        for down, encoder in zip(self.down, self.enc):
            x = encoder(down(x))
            skips.append(x)
        x = skips.pop()
        for stage in reversed(range(len(self.up))):
            x = self.up[stage](x)
            x = self.dec[stage](x.replace_feature(torch.cat([x.features, skips.pop().features], dim=1)))
        return x


def model_pair(device: str, dtype: torch.dtype):
    """Our SparseUNet (seeded init) and the spconv twin with its weights."""
    torch.manual_seed(0)
    ours = SparseUNet(IN_CHANNELS)
    peer = PeerUNet(IN_CHANNELS)
    peer.load_state_dict(ours.state_dict(), strict=True)
    return ours.to(device, dtype), peer.to(device, dtype)


def unet_cases(sites, device: str, dtype: torch.dtype = torch.float32):
    """Forward (eval, no_grad) and forward+backward (training mode) of the whole network, ours and spconv's."""
    ours_model, peer_model = model_pair(device, dtype)
    indices = sites.indices.to(device)
    grid = [math.ceil(size / 16) * 16 for size in sites.spatial_shape]
    features = torch.randn(indices.shape[0], IN_CHANNELS, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    count = indices.shape[0]
    label = f'SparseUNet (SpUNet 32-256-96) {{}}, {sites.label}'

    def forward(model, tensor_type):
        model.eval()
        with torch.no_grad():
            out = model(tensor_type(features, indices, grid, 1))
        return (out.features,)

    def forward_backward(model, tensor_type):
        model.train()
        inputs = features.clone().requires_grad_()
        out = model(tensor_type(inputs, indices, grid, 1))
        _, parameters = zip(*sorted(model.named_parameters()))
        return sparse_conv.loss_gradients(out.features, (inputs, *parameters))

    def comparable(result):
        return sparse_conv.plain(tensor.cpu() for tensor in result)

    cases = []
    for passes, run in (('fwd', forward), ('fwd+bwd', forward_backward)):
        cases.append(sparse_conv.Case(
            label.format(passes), lambda run=run: run(ours_model, SparseTensor),
            lambda run=run: run(peer_model, spconv.SparseConvTensor), comparable, comparable, count, None, 0.0))
    return cases


def float64_difference(sites, device: str) -> float:
    """Max relative difference of the training-mode fwd+bwd (output and every gradient), float64, 1 thread."""
    _, case = unet_cases(sites, device, torch.float64)
    previous = torch.get_num_threads()
    sparse_conv.set_threads(1)
    try:
        ours, peer = case.comparable_ours(case.ours()), case.comparable_peer(case.peer())
    finally:
        sparse_conv.set_threads(previous)
    return sparse_conv.compare(ours, peer)[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help=f'one smaller sweep ({QUICK_SCENE}), 1 thread')
    parser.add_argument('--threads', type=int, nargs='+',
                        help='CPU thread counts to run (default: 1 with --quick, else 1 and the current torch count)')
    parser.add_argument('--json', type=Path, help='also write the results as JSON to this path')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    args = parser.parse_args()
    if args.threads is None:
        args.threads = [1] if args.quick else sorted({1, torch.get_num_threads()})
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: CUDA is not available')
    if args.device == 'cuda' and sparse_conv.SPCONV.cppconstants.CPU_ONLY_BUILD:
        sys.exit(f'--device cuda: the installed {sparse_conv.PEER} is no CUDA peer; install spconv-cu12x (and '
                 'cumm-cu12x)')
    started = time.perf_counter()
    rounds, target_s = 3, 0.05
    cpu = protocol.cpu_name()
    gpu = torch.cuda.get_device_name() if args.device == 'cuda' else None
    threads = args.threads[0] if len(args.threads) == 1 else args.threads
    print(f'sparse_unet benchmark{" (quick)" if args.quick else ""}: ours = sparsevision SparseUNet, peer = the same '
          f'network on {sparse_conv.PEER}')
    print(f'machine: {os.cpu_count()} cores, {cpu}{f", GPU {gpu}" if gpu else ""}; device {args.device}; '
          f'threads {args.threads}; load average {os.getloadavg()[0]:.2f} at start')
    print(f'versions: {sparse_conv.library_versions()}')
    print(f'peer patches: {sparse_conv.PEER_PATCHES}; '
          'spconv\'s bundled OpenMP runtime set to the thread count too')
    clock = 'CUDA events' if args.device == 'cuda' else 'wall clock'
    print(f'timing ({clock}): float32, whole network incl. kernel-map builds; {rounds} rounds alternating sides, each '
          f'side best of {sparse_conv.REPETITIONS} repetitions (5 for calls under '
          f'{sparse_conv.SHORT_CALL_S * 1e3:.0f} ms); the check call is the warm-up')
    print(f'match = ours vs spconv at 1 thread, max abs diff <= {TOLERANCE["fwd"]:g} (fwd) / '
          f'{TOLERANCE["fwd+bwd"]:g} (fwd+bwd, training-mode batch norm) * max|spconv| for the output and every '
          'gradient; ratio = ours/peer time, median over rounds (lower is better)')
    sites, scene_note = street_scene_or_stand_in(**QUICK_SCENE) if args.quick else street_scene_or_stand_in()
    print(f'street scene: {scene_note}')
    print(f'input {sites.label}: {sites.indices.shape[0]} sites, grid {sites.spatial_shape}')
    same_function = float64_difference(sites, 'cpu')
    print(f'float64 check (on the CPU, training-mode fwd+bwd, 1 thread): output and all gradients agree to '
          f'{same_function:.0e} of their size ({"yes" if same_function <= FLOAT64_TOLERANCE else "NO"}, tolerance '
          f'{FLOAT64_TOLERANCE:g})\n')
    cases = unet_cases(sites, args.device)
    previous_threads = torch.get_num_threads()
    rows = []
    try:
        for number, (case, tolerance) in enumerate(zip(cases, TOLERANCE.values()), 1):
            case_start = time.perf_counter()
            sparse_conv.RELATIVE_TOLERANCE = tolerance   # read by sparse_conv.compare
            rows += sparse_conv.run_case(case, args.threads, rounds, target_s, args.device)
            print(f'  [{number}/{len(cases)}] {case.name}: {time.perf_counter() - case_start:.1f} s', file=sys.stderr,
                  flush=True)
    finally:
        sparse_conv.set_threads(previous_threads)
    rows.sort(key=lambda row: args.threads.index(row['threads']))
    sparse_conv.print_table(rows)
    print(f'\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at end '
          '(above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'sparse_unet', sparse_conv.PEER, args.device, threads, cpu, gpu, rows)
    if same_function > FLOAT64_TOLERANCE or not all(row['match'] for row in rows):
        sys.exit('outputs differ between ours and spconv at 1 thread')


if __name__ == '__main__':
    main()
