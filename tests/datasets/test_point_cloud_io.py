"""read_points: every format round-trips, every bad file fails with a clear message; PointCloudFolderDataset."""
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsevision.datasets import PointCloudFolderDataset, read_points
from sparsevision.datasets.point_cloud_io import count_points

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
    with pytest.raises(ValueError, match='is not a PLY file'):
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


# .ply / .pcd are parsed with numpy: valid files read as open3d reads them, damaged ones fail instead of returning
# open3d's uninitialised rows.

def read_with_open3d(path):
    """The columns open3d gives for a valid file (what read_points returned when it used open3d)."""
    import open3d

    cloud = open3d.t.io.read_point_cloud(str(path))
    columns = [cloud.point.positions.numpy().astype(np.float64)]
    for name in ('colors', 'normals', 'intensity'):
        if name in cloud.point:
            values = cloud.point[name].numpy()
            scale = np.iinfo(values.dtype).max if values.dtype.kind in 'iu' else 1
            columns.append(values.reshape(len(values), -1).astype(np.float64) / scale)
    return np.concatenate(columns, axis=1).astype(np.float32)


def write_tensor_open3d(path, count=50, seed=0, **options):
    """A cloud with colours, normals and intensity written by open3d's tensor API."""
    import open3d

    rng = np.random.default_rng(seed)
    points = open3d.t.geometry.PointCloud(open3d.core.Tensor(rng.uniform(-10, 10, (count, 3)).astype(np.float32)))
    points.point.colors = open3d.core.Tensor(rng.random((count, 3)).astype(np.float32))
    points.point.normals = open3d.core.Tensor(np.tile(np.float32([0, 0, 1]), (count, 1)))   # repeats: LZF copies
    points.point.intensity = open3d.core.Tensor(rng.random((count, 1)).astype(np.float32))
    assert open3d.t.io.write_point_cloud(str(path), points, **options)
    return path


def write_legacy_open3d(path, count=50, seed=0, **options):
    """A cloud with colours and normals written by open3d's legacy API (PLY: doubles and uchar colours)."""
    import open3d

    rng = np.random.default_rng(seed)
    points = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(rng.uniform(-10, 10, (count, 3))))
    points.colors = open3d.utility.Vector3dVector(rng.random((count, 3)))
    points.normals = open3d.utility.Vector3dVector(np.tile([0.0, 0.0, 1.0], (count, 1)))
    assert open3d.io.write_point_cloud(str(path), points, **options)
    return path


def data_start(path, last_header_line):
    data = path.read_bytes()
    return data.index(last_header_line) + len(last_header_line)


def cut(path, size):
    path.write_bytes(path.read_bytes()[:size])
    return path


def write_ply(path, properties, rows, layout='binary_little_endian', before='', after=''):
    """A PLY file whose vertex element has ``properties`` [(type, name)] and ``rows`` (a numpy structured array)."""
    header = (f'ply\nformat {layout} 1.0\ncomment made by a test\n{before}element vertex {len(rows)}\n'
              + ''.join(f'property {kind} {name}\n' for kind, name in properties) + after + 'end_header\n')
    if layout == 'ascii':
        body = ''.join(' '.join(str(value) for value in row) + '\n' for row in rows.tolist()).encode()
    else:
        body = rows.astype(rows.dtype.newbyteorder('<' if layout == 'binary_little_endian' else '>')).tobytes()
    path.write_bytes(header.encode() + body)
    return path


def write_pcd(path, fields, text_rows):
    """An ascii PCD file with ``fields`` [(name, size, type)] and ``text_rows`` (lines of numbers)."""
    names, sizes, types = zip(*fields)
    path.write_text(f'# .PCD v0.7\nVERSION 0.7\nFIELDS {" ".join(names)}\nSIZE {" ".join(map(str, sizes))}\n'
                    f'TYPE {" ".join(types)}\nCOUNT {" ".join("1" * len(fields))}\nWIDTH {len(text_rows)}\n'
                    f'HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(text_rows)}\nDATA ascii\n'
                    + ''.join(f'{row}\n' for row in text_rows))
    return path


@pytest.mark.parametrize('writer', [write_tensor_open3d, write_legacy_open3d])
@pytest.mark.parametrize('name, options', [
    ('ascii.ply', dict(write_ascii=True)), ('binary.ply', {}),
    ('ascii.pcd', dict(write_ascii=True)), ('binary.pcd', {}), ('compressed.pcd', dict(compressed=True)),
])
def test_open3d_files_read_as_open3d_reads_them(tmp_path, monkeypatch, writer, name, options):
    path = writer(tmp_path / name, count=2000, **options)
    expected = read_with_open3d(path)
    assert expected.shape[1] == (10 if writer is write_tensor_open3d else 9)
    monkeypatch.setitem(sys.modules, 'open3d', None)   # reading must not need open3d
    np.testing.assert_array_equal(read_points(path), expected)


def test_open3d_mesh_ply_reads_its_vertices(tmp_path):
    import open3d

    mesh = open3d.geometry.TriangleMesh.create_box()
    mesh.compute_vertex_normals()
    for layout, write_ascii in [('ascii', True), ('binary', False)]:
        path = tmp_path / f'box_{layout}.ply'   # the vertex element, then a face element of lists
        assert open3d.io.write_triangle_mesh(str(path), mesh, write_ascii=write_ascii)
        points = read_points(path)
        np.testing.assert_allclose(points[:, :3], np.asarray(mesh.vertices), atol=1e-6)
        np.testing.assert_allclose(points[:, 3:], np.asarray(mesh.vertex_normals), atol=1e-6)


@pytest.mark.parametrize('name, promised, complete', [('binary.ply', 50, 29), ('ascii.ply', 50, 29),
                                                      ('binary.pcd', 50, 29), ('ascii.pcd', 50, 29)])
def test_truncated_files_name_the_complete_and_promised_rows(tmp_path, name, promised, complete):
    path = write_tensor_open3d(tmp_path / name, write_ascii=name.startswith('ascii'))
    start = data_start(path, b'end_header\n' if name.endswith('.ply') else b'DATA ' + name[:-4].encode() + b'\n')
    if name.startswith('ascii'):
        rows = path.read_bytes()[start:].splitlines(keepends=True)
        size = start + sum(map(len, rows[:complete])) + len(rows[complete]) // 2   # cut in the middle of a row
    else:
        size = start + (path.stat().st_size - start) * (2 * complete + 1) // (2 * promised)
    with pytest.raises(ValueError, match=f'truncated or corrupt: its header promises {promised} points but only '
                                         f'{complete} complete rows follow'):
        read_points(cut(path, size))


def test_truncated_compressed_pcd(tmp_path):
    path = write_tensor_open3d(tmp_path / 'compressed.pcd', count=2000, compressed=True)
    size = path.stat().st_size
    with pytest.raises(ValueError, match=r'truncated or corrupt: its 2000 points are compressed into \d+ bytes but '
                                         r'only \d+ bytes follow'):
        read_points(cut(path, size - 10))
    with pytest.raises(ValueError, match='promises 2000 points but only 0 complete rows'):
        read_points(cut(path, data_start(path, b'DATA binary_compressed\n') + 4))


def test_corrupt_compressed_pcd_never_unpacks_to_made_up_points(tmp_path):
    path = write_tensor_open3d(tmp_path / 'compressed.pcd', count=2000, compressed=True)
    start = data_start(path, b'DATA binary_compressed\n')
    data = bytearray(path.read_bytes())
    data[start + 4:start + 8] = (2000 * 32 + 4).to_bytes(4, 'little')   # the unpacked size is off by 4 bytes
    (tmp_path / 'wrong_size.pcd').write_bytes(data)
    with pytest.raises(ValueError, match=r'unpacks to 64004 bytes but the header promises 2000 points of 32 bytes'):
        read_points(tmp_path / 'wrong_size.pcd')
    data = bytearray(path.read_bytes())
    compressed_size = int.from_bytes(data[start:start + 4], 'little')
    data[start:start + 4] = (compressed_size - 100).to_bytes(4, 'little')   # the LZF stream stops early
    (tmp_path / 'short_stream.pcd').write_bytes(data)
    with pytest.raises(ValueError, match='does not unpack to the 64000 bytes its header promises'):
        read_points(tmp_path / 'short_stream.pcd')


@pytest.mark.parametrize('extension, header', [
    ('.ply', 'ply\nformat binary_little_endian 1.0\nelement vertex {}\nproperty float x\nproperty float y\n'
             'property float z\nend_header\n'),
    ('.ply', 'ply\nformat ascii 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\n'
             'end_header\n'),
    ('.pcd', 'FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH {}\nHEIGHT 1\nDATA binary\n'),
    ('.pcd', 'FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH {}\nHEIGHT 1\nDATA ascii\n'),
])
@pytest.mark.parametrize('promised', [5000, 10 ** 17])   # more than the file holds; far more than memory holds
def test_header_promising_more_points_than_the_file_holds(tmp_path, extension, header, promised):
    body = np.arange(12, dtype='<f4').tobytes() if 'binary' in header else b'0 1 2\n3 4 5\n6 7 8\n9 10 11\n'
    path = tmp_path / f'cloud{extension}'
    path.write_bytes(header.format(promised).encode() + body)
    with pytest.raises(ValueError, match=f'promises {promised} points but only 4 complete rows follow'):
        read_points(path)


XYZ_PROPERTIES = 'property float x\nproperty float y\nproperty float z\n'


@pytest.mark.parametrize('header, message', [
    (b'\x00\x01garbage' * 100, 'is not a PLY file'),
    (b'ply\nformat ascii 1.0\nelement vertex 1\n' + XYZ_PROPERTIES.encode(), "no 'end_header' line ends a header"),
    (b'ply\nformat ascii 1.0\nelement vertex -3\n' + XYZ_PROPERTIES.encode() + b'end_header\n',
     "the vertex count is '-3', not a whole number"),
    (b'ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n',
     "'property float128 x' is not"),
    (b'ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar thing x\nend_header\n',
     "'property list uchar thing x' is not"),
    (b'ply\nformat binary_middle_endian 1.0\nelement vertex 1\nend_header\n',
     "line 'format binary_middle_endian 1.0' is not a format"),
    (b'ply\nelement vertex 1\n' + XYZ_PROPERTIES.encode() + b'end_header\n', 'has no "format'),
    (b'ply\nformat ascii 1.0\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n3 0 1 2\n',
     'has no vertex element'),
    (b'ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nend_header\n1 2\n',
     'has no z per point'),
    (b'ply\nformat ascii 1.0\nelement vertex 1\n' + XYZ_PROPERTIES.encode() + b'property list uchar int n\n'
     b'end_header\n1 2 3 0\n', r'list properties \(n\)'),
    (b'ply\nformat ascii 1.0\nelement vertex 2\n' + XYZ_PROPERTIES.encode() + b'end_header\n1 2 3\n4 five 6\n',
     'corrupt: its rows are not 3 numbers each'),
    (b'ply\nformat ascii 1.0\nelement vertex 1\n' + XYZ_PROPERTIES.encode() + b'end_header\n1 2 3 4\n',
     'its rows hold 4 numbers but the header declares 3'),
])
def test_hostile_ply_headers_fail_with_one_line(tmp_path, header, message):
    (tmp_path / 'bad.ply').write_bytes(header)
    with pytest.raises(ValueError, match=message) as error:
        read_points(tmp_path / 'bad.ply')
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('header, message', [
    ('VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\n', "no 'DATA' line ends a header"),
    ('hello world\nDATA ascii\n', "line 'hello world' does not start with one of VERSION"),
    ('WIDTH 1\nDATA ascii\n', 'has no FIELDS line'),
    ('FIELDS x y z\nSIZE 4 4\nTYPE F F F\nWIDTH 1\nDATA ascii\n', 'FIELDS names 3 fields but SIZE, TYPE'),
    ('FIELDS x y z\nSIZE 4 4 3\nTYPE F F F\nWIDTH 1\nDATA ascii\n', "field 'z' has TYPE F SIZE 3"),
    ('FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH -1\nDATA ascii\n', "WIDTH is '-1', not a whole number"),
    ('FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nDATA ascii\n', 'has no WIDTH line'),
    ('FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nPOINTS 3\nDATA ascii\n', 'POINTS 3 is not WIDTH 2 x HEIGHT 1'),
    ('FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nDATA binary_zipped\n', "DATA is 'binary_zipped', not one of"),
    ('FIELDS x y intensity\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nDATA ascii\n', 'has no z per point'),
])
def test_hostile_pcd_headers_fail_with_one_line(tmp_path, header, message):
    (tmp_path / 'bad.pcd').write_text(header + '1 2 3\n')
    with pytest.raises(ValueError, match=message) as error:
        read_points(tmp_path / 'bad.pcd')
    assert '\n' not in str(error.value)


VERTEX_TYPES = [('short', 'x'), ('int', 'y'), ('double', 'z'), ('ushort', 'red'), ('ushort', 'green'),
                ('ushort', 'blue'), ('float', 'alpha'), ('uint8', 'intensity')]


@pytest.mark.parametrize('layout', ['ascii', 'binary_little_endian', 'binary_big_endian'])
def test_ply_types_layouts_and_other_elements(tmp_path, layout):
    rows = np.array([(1, -2, 3.5, 65535, 0, 257, 0.5, 255), (-4, 5, 6.25, 1, 2, 3, 0.25, 51)],
                    dtype=[(name, {'short': 'i2', 'int': 'i4', 'double': 'f8', 'ushort': 'u2', 'float': 'f4',
                                   'uint8': 'u1'}[kind]) for kind, name in VERTEX_TYPES])
    before = 'element camera 1\nproperty float focal\n'   # a fixed-size element before the vertices: skipped
    after = 'element face 3\nproperty list uchar int vertex_indices\n'   # not read
    path = write_ply(tmp_path / 'cloud.ply', VERTEX_TYPES, rows, layout, before=before, after=after)
    data = path.read_bytes()
    start = data.index(b'end_header\n') + len(b'end_header\n')
    path.write_bytes(data[:start] + (b'35.0\n' if layout == 'ascii' else np.float32(35).tobytes()) + data[start:])
    expected = np.array([[1, -2, 3.5, 1, 0, 257 / 65535, 1], [-4, 5, 6.25, 1 / 65535, 2 / 65535, 3 / 65535, 0.2]],
                        np.float32)
    np.testing.assert_allclose(read_points(path), expected, rtol=1e-6)


def test_partial_colours_or_normals_are_not_completed(tmp_path):
    properties = [('float', 'x'), ('float', 'y'), ('float', 'z'), ('uchar', 'red'), ('uchar', 'green'), ('float', 'nx')]
    rows = np.array([(1, 2, 3, 10, 20, 0.5)], dtype=[(name, {'float': 'f4', 'uchar': 'u1'}[kind])
                                                     for kind, name in properties])
    path = write_ply(tmp_path / 'partial.ply', properties, rows)
    np.testing.assert_array_equal(read_points(path), [[1, 2, 3]])   # open3d invents a blue and two normals here
    path = write_pcd(tmp_path / 'partial.pcd', [('x', 4, 'F'), ('y', 4, 'F'), ('z', 4, 'F'), ('normal_x', 4, 'F'),
                                                ('normal_y', 4, 'F')], ['1 2 3 0 1'])
    np.testing.assert_array_equal(read_points(path), [[1, 2, 3]])   # open3d crashes the process here


def test_pcd_packed_colours_and_organised_clouds(tmp_path):
    packed = (10 << 16) | (20 << 8) | 30
    as_float = np.array([packed], '<u4').view('<f4')[0]
    expected = [[1, 2, 3, 10 / 255, 20 / 255, 30 / 255]]
    xyz = [('x', 4, 'F'), ('y', 4, 'F'), ('z', 4, 'F')]
    for name, rgb_field, value in [('pcl.pcd', ('rgb', 4, 'F'), packed),   # PCL writes a float rgb as integer bits
                                   ('float.pcd', ('rgb', 4, 'F'), repr(float(as_float))),
                                   ('unsigned.pcd', ('rgb', 4, 'U'), packed),
                                   ('alpha.pcd', ('rgba', 4, 'U'), packed | 255 << 24)]:
        path = write_pcd(tmp_path / name, xyz + [rgb_field], [f'1 2 3 {value}'])
        np.testing.assert_allclose(read_points(path), expected, rtol=1e-6, err_msg=name)
    path = write_pcd(tmp_path / 'organised.pcd', xyz, ['1 2 3', 'nan nan nan', '4 5 6', '7 8 9'])
    path.write_text(path.read_text().replace('WIDTH 4\nHEIGHT 1', 'WIDTH 2\nHEIGHT 2'))
    with pytest.warns(UserWarning, match='dropped 1 of 4 points'):
        np.testing.assert_array_equal(read_points(path), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])


def test_truncated_xyz(tmp_path):
    (tmp_path / 'cut.xyz').write_text('1 2 3\n4 5 6\n7 8\n')
    with pytest.raises(ValueError, match='not a readable .xyz file.*truncated or corrupt'):
        read_points(tmp_path / 'cut.xyz')
    (tmp_path / 'empty.xyz').write_text('')
    with pytest.raises(ValueError, match='holds no points'):
        read_points(tmp_path / 'empty.xyz')


def test_real_scan_as_ply_and_pcd(tmp_path):
    import open3d

    if not (REAL_SCANS / 'nuscenes_lidar_top.bin').is_file():
        pytest.skip(f'real scans not found in {REAL_SCANS} (they are never copied into the repository)')
    scan = read_points(REAL_SCANS / 'nuscenes_lidar_top.bin', num_columns=5, feature_columns=[3])
    cloud = open3d.t.geometry.PointCloud(open3d.core.Tensor(scan[:, :3]))
    cloud.point.intensity = open3d.core.Tensor(scan[:, 3:])
    for name, options in [('scan.ply', {}), ('scan.pcd', {}), ('scan_compressed.pcd', dict(compressed=True)),
                          ('scan_ascii.pcd', dict(write_ascii=True))]:
        assert open3d.t.io.write_point_cloud(str(tmp_path / name), cloud, **options)
        np.testing.assert_array_equal(read_points(tmp_path / name), scan, err_msg=name)


def test_count_points_reads_sizes_and_headers_only(tmp_path):
    np.zeros((7, 5), np.float32).tofile(tmp_path / 'scan.bin')
    np.save(tmp_path / 'scan.npy', np.zeros((6, 3)))
    (tmp_path / 'scan.xyz').write_text('1 2 3\n4 5 6\n')
    write_pcd(tmp_path / 'scan.pcd', [('x', 4, 'F'), ('y', 4, 'F'), ('z', 4, 'F')], ['1 2 3'] * 3)
    write_ply(tmp_path / 'scan.ply', [('float', 'x'), ('float', 'y'), ('float', 'z')],
              np.zeros(4, [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]))
    counts = {name: count_points(tmp_path / name, num_columns=5)
              for name in ('scan.bin', 'scan.npy', 'scan.xyz', 'scan.pcd', 'scan.ply')}
    assert counts == {'scan.bin': 7, 'scan.npy': 6, 'scan.xyz': 2, 'scan.pcd': 3, 'scan.ply': 4}
    header = ('ply\nformat binary_little_endian 1.0\nelement vertex 100000000000\nproperty float x\n'
              'property float y\nproperty float z\nend_header\n')
    (tmp_path / 'promise.ply').write_bytes(header.encode() + np.zeros(12, np.float32).tobytes())
    assert count_points(tmp_path / 'promise.ply') == 10 ** 11   # what the header says, before any row is read
    with pytest.raises(ValueError, match='truncated'):
        count_points(tmp_path / 'scan.bin')   # 5 columns read as the default 4
    with pytest.raises(FileNotFoundError, match='does not exist'):
        count_points(tmp_path / 'missing.ply')


READ_PEAK = '''
import resource, sys
from sparsevision.datasets import read_points
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
points = read_points(sys.argv[1])
print(len(points), points.shape[1], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
'''


@pytest.mark.skipif(sys.platform != 'linux', reason='ru_maxrss is counted in KiB on Linux only')
def test_large_binary_ply_is_read_without_float64_tables(tmp_path, python_process):
    count = 4_000_000
    rows = np.zeros(count, [('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1'),
                            ('intensity', '<f4')])
    rows['x'] = np.arange(count, dtype=np.float32)
    path = write_ply(tmp_path / 'large.ply', [('float', 'x'), ('float', 'y'), ('float', 'z'), ('uchar', 'red'),
                                              ('uchar', 'green'), ('uchar', 'blue'), ('float', 'intensity')], rows)
    del rows
    result = python_process(['-c', READ_PEAK, path])
    assert result.returncode == 0, result.stderr[-2000:]
    points, columns, peak_growth = map(int, result.stdout.split())
    assert (points, columns) == (count, 7)
    # The file's rows (19 bytes a point) and two float32 tables of 7 columns at most; float64 tables took 134.
    assert peak_growth < count * (19 + 2 * 7 * 4), f'{peak_growth / count:.0f} bytes a point'
