"""read_points: every format round-trips, every bad file fails with a clear message; PointCloudFolderDataset."""
from pathlib import Path

import numpy as np
import pytest

from sparsevision.datasets import PointCloudFolderDataset, read_points

REAL_SCANS = Path(__file__).resolve().parents[3] / 'shared/data/real_scans'


def cloud(count=50, seed=0):
    return np.random.default_rng(seed).uniform(-10, 10, size=(count, 3))


def write_open3d(path, positions, colors=None, normals=None):
    import open3d

    points = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(positions))
    if colors is not None:
        points.colors = open3d.utility.Vector3dVector(colors)
    if normals is not None:
        points.normals = open3d.utility.Vector3dVector(normals)
    assert open3d.io.write_point_cloud(str(path), points)


@pytest.mark.parametrize('extension', ['.ply', '.pcd'])
def test_open3d_formats_keep_colours_then_normals(tmp_path, extension):
    positions, colors = cloud(), np.random.default_rng(1).random((50, 3))
    normals = np.tile([0.0, 0.0, 1.0], (50, 1))
    write_open3d(tmp_path / f'scan{extension}', positions, colors, normals)
    points = read_points(tmp_path / f'scan{extension}')
    assert points.dtype == np.float32 and points.shape == (50, 9)
    np.testing.assert_allclose(points[:, :3], positions, atol=1e-5)
    np.testing.assert_allclose(points[:, 3:6], colors, atol=1 / 255)   # stored as bytes, read back in [0, 1]
    np.testing.assert_allclose(points[:, 6:], normals, atol=1e-6)
    assert read_points(tmp_path / f'scan{extension}', feature_columns=()).shape == (50, 3)


def test_xyz_and_pcd_intensity(tmp_path):
    import open3d

    positions = cloud()
    write_open3d(tmp_path / 'scan.xyz', positions)
    np.testing.assert_allclose(read_points(tmp_path / 'scan.xyz'), positions, atol=1e-5)
    intensity = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    tensor_cloud = open3d.t.geometry.PointCloud(open3d.core.Tensor(positions.astype(np.float32)))
    tensor_cloud.point.intensity = open3d.core.Tensor(intensity)
    open3d.t.io.write_point_cloud(str(tmp_path / 'lidar.pcd'), tensor_cloud)
    np.testing.assert_allclose(read_points(tmp_path / 'lidar.pcd')[:, 3:], intensity)


def test_bin_layouts_and_column_options(tmp_path):
    rows = np.random.default_rng(0).random((20, 5)).astype(np.float32)
    rows[:, :4].tofile(tmp_path / 'kitti.bin')
    np.testing.assert_array_equal(read_points(tmp_path / 'kitti.bin'), rows[:, :4])   # x, y, z, intensity
    rows.tofile(tmp_path / 'nuscenes.bin')
    np.testing.assert_array_equal(read_points(tmp_path / 'nuscenes.bin', num_columns=5), rows)
    np.testing.assert_array_equal(read_points(tmp_path / 'nuscenes.bin', num_columns=5, feature_columns=[3]),
                                  rows[:, :4])
    np.testing.assert_array_equal(read_points(tmp_path / 'nuscenes.bin', num_columns=5, xyz_columns=(2, 1, 0),
                                              feature_columns=[4]), rows[:, [2, 1, 0, 4]])


def test_npy_is_cast_to_float32(tmp_path):
    table = np.random.default_rng(0).random((30, 4))
    np.save(tmp_path / 'float64.npy', table)
    np.save(tmp_path / 'integer.npy', np.arange(12).reshape(4, 3))
    points = read_points(tmp_path / 'float64.npy')
    assert points.dtype == np.float32 and np.allclose(points, table)
    assert read_points(tmp_path / 'integer.npy').tolist() == np.arange(12).reshape(4, 3).tolist()


def test_missing_directory_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_points(tmp_path / 'missing.bin')
    with pytest.raises(ValueError, match='is not a file'):
        read_points(tmp_path)
    (tmp_path / 'scan.las').write_bytes(b'LASF')
    with pytest.raises(ValueError, match=r"unsupported extension '.las'.*\.bin, \.npy, \.pcd, \.ply, \.xyz"):
        read_points(tmp_path / 'scan.las')


def test_corrupt_and_empty_files(tmp_path):
    (tmp_path / 'corrupt.ply').write_text('not a ply file\n')
    with pytest.raises(ValueError, match='no points.*corrupt'):
        read_points(tmp_path / 'corrupt.ply')
    (tmp_path / 'corrupt.npy').write_bytes(b'\x93NUMPY garbage')
    with pytest.raises(ValueError, match='not a readable .npy file'):
        read_points(tmp_path / 'corrupt.npy')
    (tmp_path / 'empty.bin').write_bytes(b'')
    with pytest.raises(ValueError, match='holds no points'):
        read_points(tmp_path / 'empty.bin')
    np.save(tmp_path / 'empty.npy', np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match='holds no points'):
        read_points(tmp_path / 'empty.npy')


def test_truncated_bin_names_the_row_size(tmp_path):
    np.zeros(4 * 4 + 2, np.float32).tofile(tmp_path / 'truncated.bin')   # 4 rows and half of a fifth
    with pytest.raises(ValueError, match=r'72 bytes.*4-column float32 rows \(16 bytes each\).*truncated'):
        read_points(tmp_path / 'truncated.bin')
    with pytest.raises(ValueError, match='num_columns must be an integer >= 3'):
        read_points(tmp_path / 'truncated.bin', num_columns=2)


@pytest.mark.parametrize('array, message', [
    (np.zeros(10, np.float32), r'shape \(10,\)'),
    (np.zeros((10, 2), np.float32), r'shape \(10, 2\)'),
    (np.zeros((10, 3), bool), 'bool array'),
    (np.full((10, 3), 'a'), '<U1 array'),
])
def test_wrong_npy_shape_or_dtype(tmp_path, array, message):
    np.save(tmp_path / 'bad.npy', array)
    with pytest.raises(ValueError, match=message):
        read_points(tmp_path / 'bad.npy')


def test_missing_columns_are_named(tmp_path):
    np.zeros((5, 4), np.float32).tofile(tmp_path / 'scan.bin')
    with pytest.raises(ValueError, match=r'4 columns, so column\(s\) \[4\] do not exist'):
        read_points(tmp_path / 'scan.bin', feature_columns=[3, 4])
    with pytest.raises(ValueError, match='xyz_columns must name 3 columns'):
        read_points(tmp_path / 'scan.bin', xyz_columns=(0, 1))


def test_non_finite_points_are_dropped_with_a_count(tmp_path):
    table = np.arange(20, dtype=np.float32).reshape(5, 4)
    table[1, 0], table[3, 2], table[4, 3] = np.nan, np.inf, np.nan   # NaN intensity is kept
    table.tofile(tmp_path / 'scan.bin')
    with pytest.warns(UserWarning, match='dropped 2 of 5 points with a NaN or infinite x, y or z'):
        points = read_points(tmp_path / 'scan.bin')
    assert points[:, 0].tolist() == [0, 8, 16]
    np.full((3, 4), np.nan, np.float32).tofile(tmp_path / 'all_nan.bin')
    with pytest.raises(ValueError, match='all 3 points'):
        read_points(tmp_path / 'all_nan.bin')


@pytest.mark.parametrize('name, num_columns, count, feature_high', [
    ('nuscenes_lidar_top.bin', 5, 34688, (255, 31)),   # x, y, z, intensity, ring
    ('scannet_scene0000_00.bin', 6, 40684, (255,) * 3),   # x, y, z, r, g, b (0-255)
    ('sunrgbd_000017.bin', 6, 50000, (1,) * 3),   # x, y, z, r, g, b (0-1)
])
def test_real_scans(name, num_columns, count, feature_high):
    if not (REAL_SCANS / name).is_file():
        pytest.skip(f'real scans not found in {REAL_SCANS} (they live in ../shared/data/real_scans next to the '
                    'repository and are never copied into it)')
    points = read_points(REAL_SCANS / name, num_columns=num_columns)
    assert points.shape == (count, num_columns) and np.isfinite(points[:, :3]).all()
    assert np.ptp(points[:, :3], axis=0).min() > 1.0   # metres of extent on every axis
    features = points[:, 3:]
    assert (features >= 0).all() and (features.max(axis=0) <= feature_high).all()
    assert (features.max(axis=0) > np.asarray(feature_high) / 2).all()   # the columns are where the layout says


def test_folder_dataset_reads_sorted_supported_files(tmp_path):
    np.save(tmp_path / 'b.npy', cloud(seed=1).astype(np.float32))
    cloud(seed=2).astype(np.float32).tofile(tmp_path / 'a.bin')   # [50, 3] read as 3 columns below
    write_open3d(tmp_path / 'c.PLY', cloud(seed=3))
    (tmp_path / 'notes.txt').write_text('not a point cloud')
    dataset = PointCloudFolderDataset(str(tmp_path), num_columns=3)
    assert len(dataset) == 3
    samples = [dataset[index] for index in range(3)]   # no pipeline: the data infos themselves
    assert [Path(sample['lidar_path']).name for sample in samples] == ['a.bin', 'b.npy', 'c.PLY']
    assert [sample['sample_index'] for sample in samples] == [0, 1, 2]
    np.testing.assert_allclose(samples[1]['points'], cloud(seed=1), atol=1e-5)
    only_npy = PointCloudFolderDataset(str(tmp_path), extensions=('.npy',))
    assert len(only_npy) == 1


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        PointCloudFolderDataset(str(tmp_path / 'missing'))
    (tmp_path / 'notes.txt').write_text('not a point cloud')
    with pytest.raises(ValueError, match='holds no point cloud file'):
        PointCloudFolderDataset(str(tmp_path))
    with pytest.raises(ValueError, match="'.las'"):
        PointCloudFolderDataset(str(tmp_path), extensions=('.las',))
