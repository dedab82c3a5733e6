"""Benchmark sparsevision's sparse convolution against spconv 2.3.8, side by side in one process.

Ours: ``sparsevision.sparse`` layers (``SubMConv3d``, ``SparseConv3d``) and the ``sparsevision.ops`` kernel-map
builders. Peer: ``spconv.pytorch`` 2.3.8 (its CPU wheel runs ``ConvAlgo.Native``), with the same weights (spconv's
``state_dict`` loaded into ours), the same features and the same sites, float32, bias off.

Inputs: (a) a LiDAR-like street scene: a ground plane, buildings, parked cars and poles laid out by a seeded numpy
generator, ray-cast with open3d's ``RaycastingScene`` from 64 beams x 2048 azimuths at five sensor positions along
the street (aggregated sweeps), voxelised at 0.1 m; (b) the real meshes in ``../shared/data/meshes`` (bunny,
airplane), area-weighted surface samples voxelised so the longest side spans 200 voxels (skipped if missing).
Sites are sorted by (z, y, x) and form one batch sample.

Rows: kernel-map build (submanifold k3: ``submanifold_kernel_map`` vs ``get_indice_pairs(subm=True)``; strided k3 s2:
``downsample_indices`` + ``build_kernel_map`` + ``invert_kernel_map``, what our strided layer builds, vs
``get_indice_pairs``); ``SubMConv3d`` k3 C->C at C = 16/32/64/128 with the kernel map already built (the conv alone:
both libraries reuse it, checked by counting builds), forward and forward+backward; ``SubMConv3d`` and strided
``SparseConv3d`` k3 s2 including the kernel-map build (a fresh ``SparseConvTensor`` every call, both libraries).
Forward+backward returns the input and weight gradients of ``sum(out ** 2) / 2``.

``ratio`` is ours/peer time: lower is better, below 1 means ours is faster. It is the median of the per-round ratios
(rounds alternate which side runs first; each side best of ``REPETITIONS``, 5 for short calls, per round); ``spread``
is their min-max.
``GFLOP/s`` = 2 * pairs * C_in * C_out / time (pairs = kernel-map entries >= 0); forward+backward counts 3x; rows that
include the map build count only the convolution's flops.

``match``: our output against spconv's output at 1 thread (the oracle; spconv 2.3.8 races on CPU above 1 thread),
max abs diff <= ``RELATIVE_TOLERANCE`` * max|oracle| for each float tensor, exact for kernel maps and output sites
(rows of strided outputs and kernel maps are compared in sorted-site order). Above 1 thread, ``spconv = own 1t``
says whether spconv's output still matches its own 1-thread output under the same tolerance, with the relative
difference when not (a finding about the peer, not a failure of ours); ``ours = own 1t`` whether ours is bitwise
identical to our 1-thread output.

Peer patches, printed in the header: without CUDA, ``spconv.pytorch.ops.get_current_stream = lambda: 0`` (its CPU
backward asks for a CUDA stream); spconv's bundled OpenMP runtime (separate from torch's) is set to the same thread
count.

``--device cuda``: the same rows on the GPU against a CUDA build of spconv (spconv-cu12x; a CPU-only spconv is no
CUDA peer, and the script says so and exits), timed with CUDA events around back-to-back calls. spconv's layers run
its default algorithm there (``MaskImplicitGemm``); the kernel-map rows still call its Native builder, whose rulebook
compares with our map. Without open3d (the
GPU machine) the street scene is replaced by ``scenes.analytic_street_scene``, and the header says so.

Follows ``/work/shared/BENCHMARKS.md``. Beyond its JSON schema, every row has ``threads``, ``sites``, ``pairs``,
``gflops_peer``, ``repetitions``, ``relative_diff`` (max abs diff / max|oracle|), ``peer_matches_own_1thread``,
``peer_relative_diff_vs_own_1thread`` and ``ours_bitwise_as_1thread`` (these three null at 1 thread);
``machine.threads`` is a list when several thread counts ran.

Usage::

    python tools/benchmark/sparse_conv.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda]
"""
import argparse
import ctypes
import glob
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

import sparsevision
import sparsevision.sparse as sv
from sparsevision import ops
from sparsevision.datasets.mesh_sampling import sample_surface
from sparsevision.sparse import kernel_maps as our_kernel_maps

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)
from scenes import Sites, street_scene_or_stand_in, voxelise  # noqa: E402  (tools/benchmark/scenes.py)

MESH_FOLDER = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'meshes'   # beside the checkout, as in tests
MESH_FILES = ['bunny10k.obj', 'airplane.obj']
MESH_RESOLUTION = 200             # voxels along a mesh's longest side
MESH_SAMPLES = 2_000_000          # surface samples per mesh (over 15 per occupied voxel: no holes)
SUBMANIFOLD_CHANNELS = [16, 32, 64, 128]
HEADLINE_CHANNELS = 64
STRIDED_CHANNELS = (32, 64)
REPETITIONS = 3                   # best of, per side per round; 5 for calls under SHORT_CALL_S (noisier)
SHORT_CALL_S = 0.2
RELATIVE_TOLERANCE = 1e-3
SUBMANIFOLD_GEOMETRY = dict(kernel_size=3, stride=1, padding=1)
STRIDED_GEOMETRY = dict(kernel_size=3, stride=2, padding=1)


# ----------------------------------------------------------------------------------------------------------------
# The peer: spconv, with the minimum patched so it runs on CPU, and its own OpenMP runtime under our thread count.
# ----------------------------------------------------------------------------------------------------------------

def import_peer():
    """spconv.pytorch with its CPU backward patched; the handle of its bundled OpenMP runtime (or None)."""
    try:
        import spconv
        import spconv.pytorch as spconv_torch
        from spconv.core import ConvAlgo
    except ImportError as error:
        sys.exit(f'spconv is not installed ({error}); this benchmark compares against it')
    if not torch.cuda.is_available():
        spconv_torch.ops.get_current_stream = lambda: 0
    runtime_files = glob.glob(str(Path(spconv.__file__).parent.parent / 'spconv.libs' / 'libgomp*.so*'))
    openmp = ctypes.CDLL(runtime_files[0]) if runtime_files else None
    return spconv, spconv_torch, ConvAlgo, openmp


SPCONV, spconv_torch, ConvAlgo, SPCONV_OPENMP = import_peer()
PEER = f'spconv {SPCONV.__version__} ({"CPU" if SPCONV.cppconstants.CPU_ONLY_BUILD else "CUDA"} build)'
PEER_PATCHES = ('spconv.pytorch.ops.get_current_stream = lambda: 0 (its CPU backward asks for a CUDA stream)'
                if not torch.cuda.is_available() else 'none to spconv\'s code')


def set_threads(count: int) -> None:
    """The same thread count for torch (ours and spconv's GEMMs) and spconv's own OpenMP runtime."""
    torch.set_num_threads(count)
    if SPCONV_OPENMP is not None:
        SPCONV_OPENMP.omp_set_num_threads(count)


PEER_MAP_BUILDERS = ('get_indice_pairs', 'get_indice_pairs_implicit_gemm')   # Native; implicit GEMM (CUDA default)


def count_map_builds(call: Callable[[], object]) -> tuple:
    """``((our builds, spconv builds), call())``: proves whether a timed call reuses a kernel map or builds one."""
    builds = {'ours': 0, 'peer': 0}
    our_build = our_kernel_maps._build
    peer_builders = {name: getattr(spconv_torch.ops, name) for name in PEER_MAP_BUILDERS}

    def counting(side, function):
        def counting_build(*args, **kwargs):
            builds[side] += 1
            return function(*args, **kwargs)
        return counting_build

    our_kernel_maps._build = counting('ours', our_build)
    for name, function in peer_builders.items():
        setattr(spconv_torch.ops, name, counting('peer', function))
    try:
        result = call()
    finally:
        our_kernel_maps._build = our_build
        for name, function in peer_builders.items():
            setattr(spconv_torch.ops, name, function)
    return (builds['ours'], builds['peer']), result


# ----------------------------------------------------------------------------------------------------------------
# Inputs: voxelised real meshes (the ray-cast street scene is in scenes.py).
# ----------------------------------------------------------------------------------------------------------------

def mesh_sites(path: Path, resolution: int = MESH_RESOLUTION, samples: int = MESH_SAMPLES) -> Sites:
    """Area-weighted random surface samples (seed 0) of a mesh, voxelised so its longest side spans ``resolution``."""
    import open3d

    mesh = open3d.io.read_triangle_mesh(str(path))
    points = sample_surface(np.asarray(mesh.vertices), np.asarray(mesh.triangles), samples)
    voxel_size = np.ptp(points, axis=0).max() / resolution * (1 + 1e-9)
    return voxelise(points, voxel_size, f'{path.stem} mesh {resolution}^3')


# ----------------------------------------------------------------------------------------------------------------
# Cases: two callables on the same inputs, and how to put their outputs in a comparable form.
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One benchmark row: ours and the peer's callables, and converters to comparable tensors (outside timing)."""

    name: str
    ours: Callable[[], object]
    peer: Callable[[], object]
    comparable_ours: Callable[[object], tuple]
    comparable_peer: Callable[[object], tuple]
    sites: int
    pairs: int
    flops: float    # per call; 0 for kernel-map builds
    expected_builds: Optional[int] = None   # kernel maps one call must build (None: not a layer call)


def site_order(indices: torch.Tensor) -> torch.Tensor:
    """Permutation sorting ``(batch, z, y, x)`` rows; int64 keys (no overflow)."""
    keys = indices[:, 0].long()
    extent = indices.long().amax(dim=0) + 1
    for axis in range(1, indices.shape[1]):
        keys = keys * extent[axis] + indices[:, axis].long()
    return torch.argsort(keys)


def peer_rulebook_as_table(in_count: int, out_count: int, pairs: torch.Tensor, pair_counts: torch.Tensor,
                           submanifold: bool) -> torch.Tensor:
    """spconv's rulebook ``[2, K, P]`` as our ``[M, K]`` table (input row per output and tap, -1 where none).

    spconv stores only the first half of a submanifold rulebook: the centre tap is the identity and tap ``K-1-k``
    mirrors tap ``k``.
    """
    taps = pairs.shape[1]
    table = torch.full((out_count, taps), -1, dtype=torch.int64)
    for tap in range(taps // 2 if submanifold else taps):
        count = int(pair_counts[tap])
        inputs, outputs = pairs[0, tap, :count].long(), pairs[1, tap, :count].long()
        table[outputs, tap] = inputs
        if submanifold:
            table[inputs, taps - 1 - tap] = outputs
    if submanifold:
        table[:, taps // 2] = torch.arange(in_count)
    return table


def sorted_rows(indices: torch.Tensor, *row_tensors: torch.Tensor) -> tuple:
    """Output sites and per-site tensors in sorted-site order (libraries number output sites differently)."""
    order = site_order(indices)
    return (indices[order].long(), *(tensor[order] for tensor in row_tensors))


def loss_gradients(output, inputs: Sequence[torch.Tensor]) -> tuple:
    """``output`` and the gradients of ``sum(output ** 2) / 2`` (upstream = output: no dependence on row order)."""
    return (output, *torch.autograd.grad(output, inputs, output.detach()))


def plain(result) -> tuple:
    return tuple(tensor.detach() for tensor in result)


def kernel_map_cases(sites: Sites, device: str, strided: bool) -> List[Case]:
    indices, shape = sites.indices.to(device), sites.spatial_shape
    count = indices.shape[0]
    if not strided:
        name = f'kernel-map build SubM k3, {sites.label}'

        def ours():
            return ops.submanifold_kernel_map(indices, shape, 3)

        def peer():
            return spconv_torch.ops.get_indice_pairs(indices, 1, shape, ConvAlgo.Native, [3] * 3, [1] * 3, [1] * 3,
                                                     [1] * 3, [0] * 3, True)

        def comparable_ours(table):
            return (table.long().cpu(),)

        def comparable_peer(result):
            _, pairs, pair_counts = (tensor.cpu() for tensor in result[:3])
            return (peer_rulebook_as_table(count, count, pairs, pair_counts, submanifold=True),)

        pairs = int((ours() >= 0).sum())
    else:
        name = f'kernel-map build conv k3 s2 (+inverse), {sites.label}'

        def ours():
            out_indices, _ = ops.downsample_indices(indices, shape, 3, 2, 1)
            table = ops.build_kernel_map(indices, out_indices, shape, 3, 2, 1)
            return out_indices, table, ops.invert_kernel_map(table, count)

        def peer():
            return spconv_torch.ops.get_indice_pairs(indices, 1, shape, ConvAlgo.Native, [3] * 3, [2] * 3, [1] * 3,
                                                     [1] * 3, [0] * 3, False)

        def comparable_ours(result):
            out_indices, table, _ = (tensor.cpu() for tensor in result)
            return sorted_rows(out_indices, table.long())

        def comparable_peer(result):
            out_indices, pairs, pair_counts = (tensor.cpu() for tensor in result[:3])
            table = peer_rulebook_as_table(count, out_indices.shape[0], pairs, pair_counts, submanifold=False)
            return sorted_rows(out_indices, table)

        pairs = int((ours()[1] >= 0).sum())
    return [Case(name, ours, peer, comparable_ours, comparable_peer, count, pairs, 0.0)]


def layer_pair(in_channels: int, out_channels: int, strided: bool, device: str, dtype: torch.dtype = torch.float32):
    """spconv's layer (seeded init) and ours with its state_dict loaded: the same weights, in ``dtype``."""
    torch.manual_seed(in_channels * 1000 + out_channels)
    if strided:
        peer_layer = spconv_torch.SparseConv3d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        our_layer = sv.SparseConv3d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
    else:
        peer_layer = spconv_torch.SubMConv3d(in_channels, out_channels, 3, bias=False, indice_key='subm')
        our_layer = sv.SubMConv3d(in_channels, out_channels, 3, bias=False, indice_key='subm')
    our_layer.load_state_dict(peer_layer.state_dict())
    return our_layer.to(device, dtype), peer_layer.to(device, dtype)


def layer_case(sites: Sites, in_channels: int, out_channels: int, strided: bool, backward: bool, reuse_map: bool,
               device: str, dtype: torch.dtype = torch.float32) -> Case:
    """A layer called as users call it; with ``reuse_map`` on a tensor whose kernel map is already built."""
    our_layer, peer_layer = layer_pair(in_channels, out_channels, strided, device, dtype)
    indices, shape = sites.indices.to(device), sites.spatial_shape
    generator = torch.Generator().manual_seed(in_channels)
    features = torch.randn(indices.shape[0], in_channels, generator=generator).to(device, dtype)
    features.requires_grad_(backward)
    geometry = STRIDED_GEOMETRY if strided else SUBMANIFOLD_GEOMETRY
    out_indices = indices
    if strided:
        out_indices, _ = ops.downsample_indices(indices, shape, **geometry)
    table = ops.build_kernel_map(indices, out_indices, shape, **geometry)
    pairs = int((table >= 0).sum())

    if reuse_map:
        our_input = sv.SparseConvTensor(features, indices, shape, 1)
        our_layer(our_input)   # builds and caches the map on our_input
        peer_input = spconv_torch.SparseConvTensor(features, indices, shape, 1)
        # spconv stores a new map in a copy of indice_dict that goes to the output, not the input: hand it back
        peer_input.indice_dict = peer_layer(peer_input).indice_dict

        def our_output():
            return our_layer(our_input)

        def peer_output():
            return peer_layer(peer_input)
    else:
        def our_output():
            return our_layer(sv.SparseConvTensor(features, indices, shape, 1))

        def peer_output():
            return peer_layer(spconv_torch.SparseConvTensor(features, indices, shape, 1))

    if backward:
        def ours():
            out = our_output()
            return out.indices, *loss_gradients(out.features, (features, our_layer.weight))

        def peer():
            out = peer_output()
            return out.indices, *loss_gradients(out.features, (features, peer_layer.weight))
    else:
        def ours():
            out = our_output()
            return out.indices, out.features

        def peer():
            out = peer_output()
            return out.indices, out.features

    def comparable(result):
        out_indices, out_features, *gradients = plain(tensor.cpu() for tensor in result)
        return (*sorted_rows(out_indices, out_features), *gradients)

    kind = f'SparseConv3d k3 s2 {in_channels}->{out_channels}' if strided else \
        f'SubMConv3d k3 {in_channels}->{out_channels}'
    passes = 'fwd+bwd' if backward else 'fwd'
    map_note = 'map reused' if reuse_map else 'incl. map build'
    dtype_note = '' if dtype == torch.float32 else f' {str(dtype).removeprefix("torch.")}'
    return Case(f'{kind}{dtype_note} {passes} ({map_note}), {sites.label}', ours, peer, comparable, comparable,
                indices.shape[0], pairs, 2.0 * pairs * in_channels * out_channels * (3 if backward else 1),
                expected_builds=0 if reuse_map else 1)


def all_cases(quick: bool, device: str) -> List[Case]:
    """The headline cases on the street scan in quick mode; else every layer, width and input."""
    start = time.perf_counter()
    scene, scene_note = street_scene_or_stand_in()
    print(f'street scene: {scene_note}')
    inputs = [scene]
    if not quick:
        if MESH_FOLDER.is_dir():
            inputs += [mesh_sites(MESH_FOLDER / name) for name in MESH_FILES if (MESH_FOLDER / name).exists()]
        else:
            print(f'real meshes: {MESH_FOLDER} not found, skipping case (b)')
    for sites in inputs:
        table = ops.submanifold_kernel_map(sites.indices, sites.spatial_shape, 3)
        print(f'input {sites.label}: {sites.indices.shape[0]} sites, grid {sites.spatial_shape}, '
              f'{int((table >= 0).sum())} SubM k3 kernel pairs ({(table >= 0).sum().item() / len(table):.2f} per site)')
    print(f'inputs built in {time.perf_counter() - start:.1f} s\n')
    cases = kernel_map_cases(scene, device, strided=False)
    if quick:
        return cases + [layer_case(scene, HEADLINE_CHANNELS, HEADLINE_CHANNELS, False, backward, True, device)
                        for backward in (False, True)]
    cases += kernel_map_cases(scene, device, strided=True)
    cases += [layer_case(scene, channels, channels, False, backward, True, device)
              for backward in (False, True) for channels in SUBMANIFOLD_CHANNELS]
    cases += [layer_case(scene, HEADLINE_CHANNELS, HEADLINE_CHANNELS, False, False, False, device)]
    cases += [layer_case(scene, *STRIDED_CHANNELS, True, backward, False, device) for backward in (False, True)]
    for sites in inputs[1:]:
        cases += kernel_map_cases(sites, device, strided=False)
        cases += [layer_case(sites, HEADLINE_CHANNELS, HEADLINE_CHANNELS, False, backward, True, device)
                  for backward in (False, True)]
        cases += [layer_case(sites, *STRIDED_CHANNELS, True, False, False, device)]
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Timing and checking.
# ----------------------------------------------------------------------------------------------------------------


def timed_call(function, device: str):
    """One call's result and its time in seconds (the first call of a side is also its warm-up)."""
    protocol.synchronize(device)
    start = time.perf_counter()
    result = function()
    protocol.synchronize(device)
    return result, time.perf_counter() - start


def compare(ours: tuple, oracle: tuple):
    """(match, max abs diff, max relative diff): floats within tolerance of max|oracle|, integers exact."""
    if len(ours) != len(oracle):
        return False, math.inf, math.inf
    worst_abs, worst_relative, match = 0.0, 0.0, True
    for mine, reference in zip(ours, oracle):
        if mine.shape != reference.shape:
            return False, math.inf, math.inf
        if mine.numel() == 0:
            continue
        difference = (mine.double() - reference.double()).abs().max().item()
        scale = max(reference.double().abs().max().item(), 1e-30)
        worst_abs, worst_relative = max(worst_abs, difference), max(worst_relative, difference / scale)
        exact = not reference.is_floating_point()
        match &= difference == 0 if exact else difference <= RELATIVE_TOLERANCE * scale
    return match, worst_abs, worst_relative


def bitwise_equal(first: tuple, second: tuple) -> bool:
    return len(first) == len(second) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))


def one_thread_reference(case: Case, device: str) -> tuple:
    """spconv's output at 1 thread (the oracle) and ours, each side's first call (its warm-up), and a build count.

    Returns ``(oracle, ours at 1 thread, our first call s, peer first call s)``.

    Raises:
        RuntimeError: when a layer row builds other kernel maps than its name says (in either library).
    """
    set_threads(1)
    (our_builds, _), (our_result, our_first_s) = count_map_builds(lambda: timed_call(case.ours, device))
    (_, peer_builds), (peer_result, peer_first_s) = count_map_builds(lambda: timed_call(case.peer, device))
    if case.expected_builds is not None and (our_builds, peer_builds) != (case.expected_builds,) * 2:
        raise RuntimeError(f'{case.name}: one call built {our_builds} (ours) and {peer_builds} (spconv) kernel maps, '
                           f'expected {case.expected_builds} each: the row would time something else than it says')
    return case.comparable_peer(peer_result), case.comparable_ours(our_result), our_first_s, peer_first_s


def time_rounds(case: Case, rounds: int, target_s: float, our_first_s: float, peer_first_s: float, device: str):
    """Per-round best times of ours and the peer; rounds alternate which side runs first.

    A repetition is as many back-to-back calls as fill about ``target_s`` (from each side's first call); calls
    under ``SHORT_CALL_S`` take the best of 5 repetitions, others of ``REPETITIONS``.
    """
    ours_calls, peer_calls = max(1, round(target_s / our_first_s)), max(1, round(target_s / peer_first_s))
    repetitions = 5 if max(our_first_s, peer_first_s) < SHORT_CALL_S else REPETITIONS
    ours_times, peer_times = [], []
    for round_number in range(rounds):
        timings = [(ours_times, case.ours, ours_calls), (peer_times, case.peer, peer_calls)]
        for times, function, calls in timings[::-1] if round_number % 2 else timings:
            times.append(protocol.best_time(function, calls, repetitions, device))
    return ours_times, peer_times, repetitions


def run_case(case: Case, thread_counts: Sequence[int], rounds: int, target_s: float, device: str) -> List[dict]:
    """Check ours against spconv's 1-thread output, then time ``rounds`` rounds, at each thread count.

    At 1 thread the oracle call is also the check and the warm-up; at other counts one call per side checks
    and warms up.
    """
    oracle, our_one_thread, *one_thread_first_s = one_thread_reference(case, device)
    rows = []
    for threads in thread_counts:
        set_threads(threads)
        match, max_abs_diff, relative_diff = compare(our_one_thread, oracle)
        our_first_s, peer_first_s = one_thread_first_s
        peer_self = peer_self_relative = ours_bitwise = None
        if threads != 1:
            our_result, our_first_s = timed_call(case.ours, device)
            peer_result, peer_first_s = timed_call(case.peer, device)
            ours_now = case.comparable_ours(our_result)
            match, max_abs_diff, relative_diff = compare(ours_now, oracle)
            peer_self, _, peer_self_relative = compare(case.comparable_peer(peer_result), oracle)
            ours_bitwise = bitwise_equal(ours_now, our_one_thread)
            del our_result, peer_result, ours_now
        ours_times, peer_times, repetitions = time_rounds(case, rounds, target_s, our_first_s, peer_first_s, device)
        ratios = [ours / peer for ours, peer in zip(ours_times, peer_times)]
        ours_s, peer_s = statistics.median(ours_times), statistics.median(peer_times)
        rows.append({
            'case': f'{case.name}, {threads} thread{"s" if threads > 1 else ""} (time)',
            'threads': threads,
            'sites': case.sites,
            'pairs': case.pairs,
            'ours_ms': ours_s * 1e3,
            'peer_ms': peer_s * 1e3,
            'ratio': statistics.median(ratios),
            'rounds': ratios,
            'repetitions': repetitions,
            'match': match,
            'max_abs_diff': max_abs_diff if math.isfinite(max_abs_diff) else None,
            'relative_diff': relative_diff if math.isfinite(relative_diff) else None,
            'peer_matches_own_1thread': peer_self,
            'peer_relative_diff_vs_own_1thread': peer_self_relative if peer_self_relative is None or
            math.isfinite(peer_self_relative) else None,
            'ours_bitwise_as_1thread': ours_bitwise,
            'gflops_ours': case.flops / ours_s / 1e9 if case.flops else None,
            'gflops_peer': case.flops / peer_s / 1e9 if case.flops else None,
        })
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------------


def yes_no(value) -> str:
    return '-' if value is None else 'yes' if value else 'NO'


def peer_self_cell(row: dict) -> str:
    """Whether spconv matches its own 1-thread output; when not, by how much (relative to max|oracle|)."""
    if row['peer_matches_own_1thread'] is not False:
        return yes_no(row['peer_matches_own_1thread'])
    relative = row['peer_relative_diff_vs_own_1thread']
    return 'NO (shape)' if relative is None else f'NO ({relative:.0e} rel)'


def print_table(rows: List[dict]) -> None:
    header = ['case', 'ours ms', 'peer ms', 'ours GFLOP/s', 'peer GFLOP/s', 'match (max abs / rel diff)',
              'spconv = own 1t', 'ours = own 1t', 'spread', 'ratio']
    table = []
    for row in rows:
        diff, relative = row['max_abs_diff'], row['relative_diff']
        difference = 'inf' if diff is None else f'{diff:.1e} / {relative:.0e}'
        table.append([row['case'].removesuffix(' (time)'), f'{row["ours_ms"]:.2f}', f'{row["peer_ms"]:.2f}',
                      '-' if row['gflops_ours'] is None else f'{row["gflops_ours"]:.1f}',
                      '-' if row['gflops_peer'] is None else f'{row["gflops_peer"]:.1f}',
                      f'{yes_no(row["match"])} ({difference})',
                      peer_self_cell(row), yes_no(row['ours_bitwise_as_1thread']),
                      f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["ratio"]:.2f}'])
    protocol.print_table(header, table)


def library_versions() -> str:
    import cumm
    try:
        import open3d
        open3d_version = open3d.__version__
    except ImportError:
        open3d_version = 'not installed'
    return (f'sparsevision {sparsevision.__version__}, torch {torch.__version__}, {PEER}, cumm {cumm.__version__}, '
            f'open3d {open3d_version}, numpy {np.__version__}, python {platform.python_version()}; '
            f'{ops.extension_info()}')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='headline cases only (street scan: SubM k3 64->64 fwd, fwd+bwd, map build), under 60 s')
    parser.add_argument('--threads', type=int, nargs='+',
                        help='CPU thread counts to run (default: 1 with --quick, else 1 and the current torch count)')
    parser.add_argument('--json', type=Path, help='also write the results as JSON to this path')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    return parser.parse_args()


def main():
    args = parse_args()
    if args.threads is None:
        args.threads = [1] if args.quick else sorted({1, torch.get_num_threads()})
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: CUDA is not available')
    if args.device == 'cuda' and SPCONV.cppconstants.CPU_ONLY_BUILD:
        sys.exit(f'--device cuda: the installed {PEER} is no CUDA peer; install spconv-cu12x (and cumm-cu12x)')
    started = time.perf_counter()
    rounds, target_s = 3, 0.05
    cpu = protocol.cpu_name()
    gpu = torch.cuda.get_device_name() if args.device == 'cuda' else None
    threads = args.threads[0] if len(args.threads) == 1 else args.threads
    print(f'sparse_conv benchmark{" (quick)" if args.quick else ""}: ours = sparsevision.sparse / sparsevision.ops, '
          f'peer = {PEER}')
    print(f'machine: {os.cpu_count()} cores, {cpu}{f", GPU {gpu}" if gpu else ""}; device {args.device}; '
          f'threads {args.threads}; load average {os.getloadavg()[0]:.2f} at start')
    print(f'versions: {library_versions()}')
    print(f'peer patches: {PEER_PATCHES}; '
          + ('spconv\'s bundled OpenMP runtime set to the thread count too'
             if SPCONV_OPENMP is not None else 'spconv\'s OpenMP runtime not found: only torch\'s threads are set'))
    clock = 'CUDA events' if args.device == 'cuda' else 'wall clock'
    print(f'timing ({clock}): float32, bias off; {rounds} rounds alternating sides, each side best of {REPETITIONS} '
          f'repetitions (5 for calls under {SHORT_CALL_S * 1e3:.0f} ms) of about {target_s * 1e3:.0f} ms of calls; '
          'the check call is the warm-up')
    print(f'match = ours vs spconv at 1 thread (the oracle), max abs diff <= {RELATIVE_TOLERANCE:g} * max|spconv| per '
          'tensor, kernel maps and sites exact; GFLOP/s = 2 * pairs * C_in * C_out / time, fwd+bwd 3x; '
          'ratio = ours/peer time, median over rounds (lower is better)')
    cases = all_cases(args.quick, args.device)
    previous_threads = torch.get_num_threads()
    rows = []
    try:
        for number, case in enumerate(cases, 1):
            case_start = time.perf_counter()
            rows += run_case(case, args.threads, rounds, target_s, args.device)
            print(f'  [{number}/{len(cases)}] {case.name}: {time.perf_counter() - case_start:.1f} s', file=sys.stderr,
                  flush=True)
    finally:
        set_threads(previous_threads)
    rows.sort(key=lambda row: args.threads.index(row['threads']))   # stable: cases keep their order per count
    print_table(rows)
    racy = [row for row in rows if row['peer_matches_own_1thread'] is False]
    if racy:
        print(f'\nspconv above 1 thread: {len(racy)} of {sum(row["threads"] > 1 for row in rows)} rows differ from '
              'its own 1-thread output (a race in spconv 2.3.8 CPU); ours is compared with spconv at 1 thread')
    print(f'\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at end '
          '(above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'sparse_conv', PEER, args.device, threads, cpu, gpu, rows)
    if not all(row['match'] for row in rows):
        sys.exit('outputs differ between ours and spconv at 1 thread')


if __name__ == '__main__':
    main()
