"""Step ``peer_timing``: ours against spconv on the street scene, with the benchmarks' protocol and checks.

Rows: the SubM k3 kernel-map build; ``SubMConv3d`` k3 64->64 (map reused) forward and forward+backward in float32
and bfloat16; a whole SparseUNet forward and training step against its spconv twin (``sparse_unet.py``). On CUDA the
peer is spconv's CUDA build, installed from ``--spconv-wheels DIR`` (every wheel there, ``pip install --no-index
--no-deps --target``) or already importable; else the step is skipped. On the CPU the CPU path is timed at the
dry run's small scene against the installed spconv, float32 and the SparseUNet forward only (its training step takes
seconds there), in one round: a dry run, not a measurement.
"""
import sys
import time
from pathlib import Path

import torch

from .context import CheckContext, Outcome, StepFailed, StepSkipped, python_command, run_command
from .scene import benchmark_modules_importable, scene_details, street_scene

CHANNELS = 64
GPU_ROUNDS = 3
TARGET_S = 0.05
PIP_LIMIT_S = 120
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2}   # of max|peer|, per tensor


def install_wheels(folder: Path, context: CheckContext) -> dict:
    """Installs every wheel in ``folder`` into a folder of the run and puts it first on ``sys.path``."""
    wheels = sorted(str(path) for path in folder.glob('*.whl'))
    if not wheels:
        raise StepSkipped(f'--spconv-wheels {folder}: no wheels there')
    target = context.work_dir / 'peer_site_packages'
    result = run_command(python_command('-m', 'pip', 'install', '--quiet', '--no-index', '--no-deps', '--no-compile',
                                        '--upgrade', '--target', str(target), *wheels), context, PIP_LIMIT_S)
    if result['returncode'] != 0:
        raise StepFailed(f'pip could not install the wheels in {folder}', result)
    sys.path.insert(0, str(target))
    return {'wheels': [Path(wheel).name for wheel in wheels]}


def import_peer_benchmarks(context: CheckContext):
    """``(sparse_conv, sparse_unet)`` benchmark modules with spconv imported, or a skip saying why not."""
    details = {}
    if context.spconv_wheels:
        details = install_wheels(context.spconv_wheels, context)
    elif context.on_gpu:
        try:
            import spconv.cppconstants
        except ImportError:
            raise StepSkipped('no --spconv-wheels DIR given and no spconv installed: no CUDA peer to time against')
        if spconv.cppconstants.CPU_ONLY_BUILD:
            raise StepSkipped('no --spconv-wheels DIR given and the installed spconv is a CPU-only build')
    benchmark_modules_importable()
    try:
        import sparse_conv
        import sparse_unet
    except SystemExit as exit_message:    # sparse_conv.py exits with one line when spconv is missing
        if context.spconv_wheels:
            raise StepFailed(f'spconv installed from {context.spconv_wheels} does not import: {exit_message}', details)
        raise StepSkipped(f'spconv not importable: {exit_message}', details)
    if context.on_gpu and sparse_conv.SPCONV.cppconstants.CPU_ONLY_BUILD:
        raise StepSkipped(f'{sparse_conv.PEER} is no CUDA peer', details)
    return sparse_conv, sparse_unet, {**details, 'peer': sparse_conv.PEER}


def case_factories(context: CheckContext, sparse_conv, sparse_unet):
    """``[(label, make_cases, relative_tolerance)]``; building a case may fail (a kernel map on the device)."""
    sites, _ = street_scene(context)
    device = context.device
    dtypes = (torch.float32, torch.bfloat16) if context.on_gpu else (torch.float32,)
    factories = [('map build', lambda: sparse_conv.kernel_map_cases(sites, device, strided=False), 0.0)]
    for dtype in dtypes:
        for backward in (False, True):
            label = f'SubM {str(dtype).removeprefix("torch.")} {"fwd+bwd" if backward else "fwd"}'
            factories.append((label, lambda dtype=dtype, backward=backward: [sparse_conv.layer_case(
                sites, CHANNELS, CHANNELS, False, backward, True, device, dtype)], TOLERANCE[dtype]))
    unet_cases = {}

    def unet_case(index):
        if 'cases' not in unet_cases:
            unet_cases['cases'] = sparse_unet.unet_cases(sites, device)
        return [unet_cases['cases'][index]]

    unet_passes = list(sparse_unet.TOLERANCE.items())[:None if context.on_gpu else 1]
    for index, (passes, tolerance) in enumerate(unet_passes):
        factories.append((f'SparseUNet {passes}', lambda index=index: unet_case(index), tolerance))
    return factories


def time_against_peer(context: CheckContext) -> Outcome:
    sparse_conv, sparse_unet, details = import_peer_benchmarks(context)
    rounds = GPU_ROUNDS if context.on_gpu else 1
    details.update(scene_details(context), rounds=rounds)
    rows, errors, cells = [], [], []
    previous_threads = torch.get_num_threads()   # run_case sets spconv's and torch's CPU threads
    try:
        for label, make_cases, tolerance in case_factories(context, sparse_conv, sparse_unet):
            sparse_conv.RELATIVE_TOLERANCE = tolerance    # read by sparse_conv.compare
            started = time.monotonic()
            try:
                for case in make_cases():
                    row = sparse_conv.run_case(case, [1], rounds, TARGET_S, context.device)[0]
                    rows.append({**row, 'label': label, 'tolerance': tolerance,
                                 'seconds': round(time.monotonic() - started, 1)})
                    cells.append(f'{label} {row["ratio"]:.2f}' + ('' if row['match'] else ' MISMATCH'))
            except Exception as error:  # noqa: BLE001  (one failing row must not stop the others)
                errors.append({'case': label, 'error': f'{type(error).__name__}: {error}'[:500]})
                cells.append(f'{label} ERROR')
    finally:
        sparse_conv.set_threads(previous_threads)
    details.update(rows=rows, errors=errors)
    summary = 'ours/peer time: ' + ', '.join(cells)
    mismatched = [row['label'] for row in rows if not row['match']]
    if errors or mismatched:
        raise StepFailed(f'{len(errors)} cases failed, {len(mismatched)} outputs differ; {summary}', details)
    mode = 'device' if context.on_gpu else 'cpu-equivalent'
    return Outcome(summary, details, mode)
