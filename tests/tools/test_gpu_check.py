"""tools/gpu_check.py runs here as its CPU dry run: every step reports, and the JSON has the promised shape."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools'))

import gpu_check  # noqa: E402  (tools/gpu_check.py)

STEP_KEYS = {'name', 'status', 'mode', 'reason', 'summary', 'details', 'duration_s'}
GPU_ONLY_STEPS = {'memcheck', 'initcheck'}
CPU_EQUIVALENT_STEPS = {'tests', 'syncs_and_launches', 'peer_timing', 'cuda_graph'}


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """The report and the printed output of ``gpu_check.py --device cpu --quick --no-build``."""
    folder = tmp_path_factory.mktemp('gpu_check')
    completed = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--device', 'cpu', '--quick', '--no-build',
         '--json', str(folder / 'report.json'), '--log-dir', str(folder / 'logs')],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    return json.loads((folder / 'report.json').read_text()), completed


@pytest.mark.slow
def test_every_step_reports(dry_run):
    report, completed = dry_run
    assert report['step_names'] == list(gpu_check.STEP_NAMES)
    assert [step['name'] for step in report['steps']] == list(gpu_check.STEP_NAMES)
    assert report['device'] == 'cpu' and report['quick'] is True
    for step in report['steps']:
        assert set(step) == STEP_KEYS
        assert step['status'] in gpu_check.STATUSES
        assert (step['reason'] is None) == (step['status'] == 'ok'), step
        assert step['duration_s'] >= 0
    assert completed.returncode == (0 if report['ok'] else 1)
    assert report['ok'] == all(step['status'] != 'failed' for step in report['steps'])


@pytest.mark.slow
def test_dry_run_replaces_or_skips_each_gpu_step(dry_run):
    steps = {step['name']: step for step in dry_run[0]['steps']}
    assert steps['build']['status'] == 'skipped' and '--no-build' in steps['build']['reason']
    assert steps['environment']['status'] == 'ok'
    for name in GPU_ONLY_STEPS:
        assert steps[name]['status'] == 'skipped' and 'dry run' in steps[name]['reason']
        assert 'compute-sanitizer --tool' in steps[name]['details']['command']
    for name in CPU_EQUIVALENT_STEPS:
        assert steps[name]['status'] == 'skipped' or steps[name]['mode'] == 'cpu-equivalent', steps[name]
    counts = steps['syncs_and_launches']['details']
    assert steps['syncs_and_launches']['status'] != 'ok' or {'fwd', 'fwd+bwd'} <= set(counts)


@pytest.mark.slow
def test_the_table_lists_every_step(dry_run):
    report, completed = dry_run
    table = [line for line in completed.stdout.splitlines() if line.startswith('| ')]
    assert table[0].startswith('| step | status')
    assert [line.split(' | ')[0].removeprefix('| ') for line in table[2:]] == list(gpu_check.STEP_NAMES)


def test_cuda_without_a_gpu_exits_with_one_line():
    if torch.cuda.is_available():
        pytest.skip('a GPU is here')
    completed = subprocess.run([sys.executable, 'tools/gpu_check.py', '--device', 'cuda', '--no-build'], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        'gpu_check --device cuda: CUDA is not available here (use --device cpu for the dry run)']


def test_the_stand_in_street_scene_matches_the_ray_cast_one_in_size():
    """The GPU machine has no open3d: the analytic scene stands in, at about the ray-cast scene's 115k sites."""
    sys.path.insert(0, str(ROOT / 'tools' / 'benchmark'))
    from scenes import analytic_street_scene

    sites = analytic_street_scene()
    assert 100_000 < sites.indices.shape[0] < 140_000
    assert sites.indices.dtype == torch.int32 and (sites.indices[:, 0] == 0).all()
    assert (sites.indices[:, 1:] < torch.tensor(sites.spatial_shape, dtype=torch.int32)).all()
    assert torch.unique(sites.indices, dim=0).shape == sites.indices.shape
