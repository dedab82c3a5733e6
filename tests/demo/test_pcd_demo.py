"""demo/pcd_demo.py: the embedded samples with the shipped 3D models, the real scans, and clean failures."""
import json
from pathlib import Path

import numpy as np
import pytest

REAL_SCANS = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'real_scans'   # tests only, never copied
STREET = Path(__file__).resolve().parents[2] / 'sparsevision/demo_data/point_clouds/simulated_street.bin'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def run_demo(python_process, *args):
    return python_process(['demo/pcd_demo.py', *map(str, args)])


def test_default_run_segments_and_detects_the_embedded_samples(python_process, tmp_path):
    result = run_demo(python_process, '--out-dir', tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '[1/2]' in result.stdout and '[2/2]' in result.stdout   # progress per cloud
    records = json.loads((tmp_path / 'pcd_demo.json').read_text())['predictions']
    assert [record['points'] for record in records] == ['simulated_street', 'stereo_motorcycle']
    street = records[0]
    segmentation = street['sparse_unet_lidar_scenes']['points_per_class']
    assert segmentation['ground'] > segmentation['vehicle'] > 0 and segmentation['building'] > 0
    boxes = street['centerpoint_second_lidar_scenes']['boxes']
    assert len(boxes) >= 5 and all(box['label'] == 'vehicle' for box in boxes)
    for record in records:
        assert Path(record['png']).read_bytes()[:8] == PNG_MAGIC


def write_bin(path, values):
    np.asarray(values, dtype=np.float32).tofile(path)
    return path


@pytest.mark.parametrize('make_input, message', [
    (lambda d: d / 'missing.bin', 'does not exist'),
    (lambda d: (d / 'cloud.txt').write_text('1 2 3') and d / 'cloud.txt', 'unsupported'),
    (lambda d: write_bin(d / 'truncated.bin', np.zeros(10)), 'truncated'),
    (lambda d: write_bin(d / 'empty.bin', np.zeros(0)), 'holds no points'),
])
def test_bad_input_fails_with_one_line_and_no_outputs(python_process, tmp_path, make_input, message):
    out_dir = tmp_path / 'out'
    result = run_demo(python_process, make_input(tmp_path), '--out-dir', out_dir)
    assert result.returncode == 1, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if 'pcd_demo: error' in line]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_points_outside_the_range_are_labelled_minus_one_not_dropped(python_process, tmp_path):
    street = np.fromfile(STREET, dtype=np.float32).reshape(-1, 4)
    cloud = write_bin(tmp_path / 'partly_far.bin', np.concatenate([street, [[500.0, 0, 0, 0], [0, 600.0, 0, 0]]]))
    result = run_demo(python_process, cloud, '--model', 'sparse_unet_lidar_scenes', '--out-dir', tmp_path / 'out')
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / 'out' / 'pcd_demo.json').read_text())['predictions'][0]
    counted = record['sparse_unet_lidar_scenes']
    assert counted['points_outside_range'] == 2
    assert sum(counted['points_per_class'].values()) + 2 == record['num_points'] == len(street) + 2


def test_a_cloud_entirely_outside_the_range_is_an_error(python_process, tmp_path):
    far = write_bin(tmp_path / 'far.bin', np.array([[500.0, 0, 0, 0], [600.0, 1, 0, 0]]))
    result = run_demo(python_process, far, '--model', 'sparse_unet_lidar_scenes', '--out-dir', tmp_path / 'out')
    assert result.returncode == 1
    assert 'outside the configured range' in result.stderr
    assert not (tmp_path / 'out').exists()


def test_checkpoint_of_another_model(python_process, tmp_path, repo_root):
    weights = repo_root / 'sparsevision/model_zoo/weights/centerpoint_second_lidar_scenes.pth'
    result = run_demo(python_process, '--model', 'sparse_unet_lidar_scenes', '--checkpoint', weights,
                      '--out-dir', tmp_path / 'out')
    assert result.returncode == 1 and 'does not fit SparseSegmentor' in result.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(not REAL_SCANS.is_dir(), reason=f'real scans not found at {REAL_SCANS} (tests only)')
@pytest.mark.parametrize('name, columns', [('nuscenes_lidar_top.bin', 5), ('scannet_scene0000_00.bin', 6),
                                           ('sunrgbd_000017.bin', 6)])
def test_demo_runs_on_the_real_scans(python_process, tmp_path, name, columns):
    result = run_demo(python_process, REAL_SCANS / name, '--columns', columns, '--out-dir', tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / 'pcd_demo.json').read_text())['predictions'][0]
    counted = record['sparse_unet_lidar_scenes']
    assert sum(counted['points_per_class'].values()) + counted['points_outside_range'] == record['num_points']
    assert (tmp_path / f'{Path(name).stem}.png').read_bytes()[:8] == PNG_MAGIC


def write_dense_street(path, count, chunk=1 << 20):
    """``count`` points of the embedded street sweep, repeated with 3 cm of noise (a dense scan: many points a
    voxel), written chunk by chunk so the test never holds the cloud."""
    street = np.fromfile(STREET, dtype=np.float32).reshape(-1, 4)
    rows = np.resize(street, (chunk, 4))
    cloud = np.memmap(path, dtype=np.float32, mode='w+', shape=(count, 4))
    generator = np.random.default_rng(0)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        cloud[start:stop] = rows[:stop - start]
        cloud[start:stop, :3] += generator.normal(0, 0.03, (stop - start, 3)).astype(np.float32)
    cloud.flush()
    return path


def test_ten_million_points_stay_under_2_gib_with_progress(run_with_peak_rss, tmp_path):
    cloud = write_dense_street(tmp_path / 'dense.bin', 10_000_000)
    result, peak = run_with_peak_rss(['demo/pcd_demo.py', cloud, '--out-dir', tmp_path / 'out'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert peak < 2 * 2**30, f'peak resident memory {peak / 2**30:.2f} GiB'   # 2.7 GiB with float64 key tables
    for step in ('read ', 'sparse_unet_lidar_scenes, ', 'centerpoint_second_lidar_scenes, ', 'drew dense.png'):
        assert step in result.stdout
    record = json.loads((tmp_path / 'out' / 'pcd_demo.json').read_text())['predictions'][0]
    counted = record['sparse_unet_lidar_scenes']
    assert record['num_points'] == sum(counted['points_per_class'].values()) + counted['points_outside_range']
    assert record['num_points'] == 10_000_000 and record['drawn_points'] == 500_000


def test_a_cloud_too_large_for_memory_is_refused_before_reading(python_process, tmp_path):
    header = ('ply\nformat binary_little_endian 1.0\nelement vertex 1000000000000\nproperty float x\n'
              'property float y\nproperty float z\nend_header\n')
    (tmp_path / 'huge.ply').write_bytes(header.encode() + np.zeros(12, np.float32).tobytes())
    result = run_demo(python_process, tmp_path / 'huge.ply', '--out-dir', tmp_path / 'out')
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if 'pcd_demo: error' in line]
    assert len(lines) == 1 and '1,000,000,000,000 points' in lines[0] and 'memory is available' in lines[0]
    assert 'read ' not in result.stdout and not (tmp_path / 'out').exists()


def test_large_clouds_are_drawn_from_a_fixed_random_subset():
    from sparsevision.apis.point_cloud import drawn_rows

    assert drawn_rows(500_000) is None
    rows = drawn_rows(2_000_000)
    assert len(rows) == len(np.unique(rows)) == 500_000 and (np.diff(rows) > 0).all() and rows[-1] < 2_000_000
    assert np.array_equal(rows, drawn_rows(2_000_000))
