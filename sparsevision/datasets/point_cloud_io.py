"""Read point clouds from files into ``[P, 3 + C]`` float32 arrays (x, y, z, then feature columns).

Every format is first read into a table of columns (memory-mapped for
``.bin`` and ``.npy``, float32 for the others), then ``xyz_columns`` and
``feature_columns`` pick the output, copied :data:`COPY_ROWS` rows at a time
into float32, so no full-size table of another type is ever made:

* ``.bin``: raw little-endian float32 rows of ``num_columns`` values (KITTI and
  its followers). Common layouts: KITTI 4 columns (x, y, z, intensity, the
  default); nuScenes 5 (x, y, z, intensity, ring); the ScanNet / SUN RGB-D
  copies of mmdetection3d 6 (x, y, z, r, g, b).
* ``.npy``: a 2-D ``[P, >=3]`` numeric array.
* ``.ply``, ``.pcd`` (parsed by :mod:`~sparsevision.datasets.ply_pcd`): x, y,
  z, then whichever of these the file holds, in this order: colours r, g, b
  (scaled to [0, 1] when stored as integers), normals nx, ny, nz, intensity.
  Other attributes are ignored. A file holding fewer points than its header
  promises is an error.
* ``.xyz``: text lines of x y z (further numbers on a line are ignored).

Points whose x, y or z is NaN or infinite are dropped with a warning saying how
many (sensors write them for rays with no return); a file where no point
remains is an error. Feature columns are not checked.

:func:`count_points` tells how many points a file holds from its size or
header, without reading them, so a caller can refuse a cloud that cannot fit.
"""
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .ply_pcd import count_pcd_points, count_ply_points, read_pcd, read_ply

SUPPORTED_EXTENSIONS = ('.bin', '.npy', '.pcd', '.ply', '.xyz')
FLOAT32_BYTES = 4
COPY_ROWS = 1 << 20   # rows converted at a time from a file's table into the float32 points
TEXT_BLOCK_BYTES = 1 << 24   # bytes read at a time when counting the lines of an .xyz file


def _read_bin(path: Path, num_columns: int) -> np.ndarray:
    """The rows of a .bin file, memory-mapped (nothing is read yet)."""
    if isinstance(num_columns, bool) or not isinstance(num_columns, (int, np.integer)) or num_columns < 3:
        raise ValueError(f'num_columns must be an integer >= 3 (x, y, z and features), got {num_columns!r}')
    size = path.stat().st_size
    row_bytes = num_columns * FLOAT32_BYTES
    if size % row_bytes:
        raise ValueError(f'{path} holds {size} bytes, not a whole number of {num_columns}-column float32 rows '
                         f'({row_bytes} bytes each): the file is truncated, or it has another number of columns '
                         '(pass num_columns=, e.g. 5 for nuScenes, 6 for ScanNet / SUN RGB-D copies)')
    if size == 0:   # an empty file cannot be mapped
        return np.empty((0, num_columns), np.float32)
    return np.memmap(path, dtype='<f4', mode='r', shape=(size // row_bytes, num_columns))


def _read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped (nothing is read yet)."""
    try:
        table = np.load(path, mmap_mode='r', allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f'{path} is not a readable .npy file ({error}); save the points with '
                         'numpy.save(path, array) as a [P, 3 + C] float array') from error
    if table.ndim != 2 or table.shape[1] < 3:
        raise ValueError(f'{path} holds an array of shape {table.shape}; a point cloud must be [P, 3 + C] '
                         '(x, y, z, features...)')
    if table.dtype.kind not in 'fiu':
        raise ValueError(f'{path} holds a {table.dtype} array; a point cloud must be floating point (or integer)')
    return table


def _read_xyz(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)   # numpy's warning on an empty file: read_points reports it
        try:
            return np.loadtxt(path, dtype=np.float32, usecols=(0, 1, 2), ndmin=2)   # each number parsed as a double
        except ValueError as error:
            raise ValueError(f'{path} is not a readable .xyz file ({error}): every line must start with the numbers '
                             'x y z, so the file is truncated or corrupt') from error


def _select_columns(table: np.ndarray, xyz_columns: Sequence[int], feature_columns: Optional[Sequence[int]],
                    path: Path) -> np.ndarray:
    num_columns = table.shape[1]
    xyz_columns = list(xyz_columns)
    if feature_columns is None:
        feature_columns = [column for column in range(num_columns) if column not in xyz_columns]
    feature_columns = list(feature_columns)
    if len(xyz_columns) != 3:
        raise ValueError(f'xyz_columns must name 3 columns (x, y, z), got {xyz_columns}')
    outside = [column for column in xyz_columns + feature_columns if not 0 <= column < num_columns]
    if outside:
        raise ValueError(f'{path} has {num_columns} columns, so column(s) {outside} do not exist; check '
                         'xyz_columns / feature_columns (and num_columns for .bin files)')
    columns = xyz_columns + feature_columns
    points = np.empty((len(table), len(columns)), np.float32)
    for start in range(0, len(table), COPY_ROWS):
        points[start:start + COPY_ROWS] = table[start:start + COPY_ROWS, columns]
    return points


def _count_lines(path: Path) -> int:
    with open(path, 'rb') as file:
        return sum(block.count(b'\n') for block in iter(lambda: file.read(TEXT_BLOCK_BYTES), b''))


def _extension(path: Path) -> str:
    """The lower-case extension of an existing point cloud file of a supported format."""
    if not path.exists():
        raise FileNotFoundError(f'point cloud file {path} does not exist')
    if not path.is_file():
        raise ValueError(f'{path} is not a file; pass a point cloud file ({", ".join(SUPPORTED_EXTENSIONS)})')
    extension = path.suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise ValueError(f'{path} has an unsupported extension {path.suffix!r}; supported point cloud files: '
                         f'{", ".join(SUPPORTED_EXTENSIONS)}')
    return extension


def count_points(path, num_columns: int = 4) -> int:
    """How many points a file holds, from its size or header, without reading them (for ``.xyz``, its lines).

    Args:
        path: a ``.bin``, ``.npy``, ``.ply``, ``.pcd`` or ``.xyz`` file.
        num_columns: float32 values per point in a ``.bin`` file (ignored for other formats).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on an unsupported extension, or a header or size :func:`read_points` would refuse.
    """
    path = Path(path)
    extension = _extension(path)
    if extension == '.bin':
        return len(_read_bin(path, num_columns))
    if extension == '.npy':
        return len(_read_npy(path))
    if extension == '.ply':
        return count_ply_points(path)
    if extension == '.pcd':
        return count_pcd_points(path)
    return _count_lines(path)


def read_points(path, num_columns: int = 4, xyz_columns: Sequence[int] = (0, 1, 2),
                feature_columns: Optional[Sequence[int]] = None) -> np.ndarray:
    """Read a point cloud file (see the module docstring for the formats and their columns).

    Args:
        path: a ``.bin``, ``.npy``, ``.ply``, ``.pcd`` or ``.xyz`` file.
        num_columns: float32 values per point in a ``.bin`` file (ignored for other formats).
        xyz_columns: the columns holding x, y, z.
        feature_columns: the columns kept as features, in order; ``None`` keeps every column that is not
            x, y or z, ``()`` keeps none.

    Returns:
        ``[P, 3 + C]`` float32: x, y, z, then the feature columns.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on an unsupported extension, an unreadable, truncated or empty file, a wrongly shaped
            array, columns that do not exist, or a cloud whose every point has a NaN or infinite coordinate.
    """
    path = Path(path)
    extension = _extension(path)
    if extension == '.bin':
        table = _read_bin(path, num_columns)
    elif extension == '.npy':
        table = _read_npy(path)
    elif extension == '.ply':
        table = read_ply(path)
    elif extension == '.pcd':
        table = read_pcd(path)
    else:
        table = _read_xyz(path)
    if len(table) == 0:
        raise ValueError(f'{path} holds no points')
    points = _select_columns(table, xyz_columns, feature_columns, path)
    del table   # unmaps a memory-mapped file
    finite = np.isfinite(points[:, :3]).all(axis=1)
    if not finite.all():
        if not finite.any():
            raise ValueError(f'all {len(points)} points of {path} have a NaN or infinite x, y or z; check the '
                             'file and the column options (xyz_columns, num_columns)')
        warnings.warn(f'{path}: dropped {len(points) - int(finite.sum())} of {len(points)} points with a NaN or '
                      'infinite x, y or z', stacklevel=2)
        points = points[finite]
    return np.ascontiguousarray(points)
