"""Read the points of ``.ply`` and ``.pcd`` files with numpy, refusing any file that holds fewer rows than promised.

Both readers return a ``[P, 3 + C]`` float32 table: x, y, z, then whichever of these the file holds, in this
order: colours r, g, b (scaled to [0, 1] when stored as integers), normals nx, ny, nz, intensity. Colours and
normals count only when all three of their columns are present; other attributes are ignored. These are the
columns open3d returned, so files read before keep their layout. Each column is converted (and scaled) in float64,
then stored as float32, so a large cloud never needs a float64 table. :func:`count_ply_points` and
:func:`count_pcd_points` read only the header.

* ``.ply`` (ascii, binary_little_endian, binary_big_endian): the ``vertex`` element, properties ``x y z``,
  ``red green blue``, ``nx ny nz``, ``intensity`` of any scalar PLY type. Elements after the vertices (a mesh's
  faces) are not read.
* ``.pcd`` (DATA ascii, binary, binary_compressed): fields ``x y z``, ``rgb`` or ``rgba`` (a packed 4-byte
  colour, also PCL's ascii convention of writing a float ``rgb`` as its integer bits), ``normal_x normal_y
  normal_z``, ``intensity``.

The header is checked before any data is read, and the data must hold every row the header promises: a truncated
or corrupt file raises a ``ValueError`` saying how many rows were complete, never a table padded with made-up
rows (open3d returns uninitialised memory for such files).
"""
import struct
from pathlib import Path
from typing import BinaryIO, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

HEADER_LIMIT_BYTES = 1 << 20
ATTRIBUTE_GROUPS = (('red', 'green', 'blue'), ('nx', 'ny', 'nz'), ('intensity',))
PLY_FORMATS = {'ascii': '', 'binary_little_endian': '<', 'binary_big_endian': '>'}
PLY_TYPES = {'char': 'i1', 'uchar': 'u1', 'short': 'i2', 'ushort': 'u2', 'int': 'i4', 'uint': 'u4',
             'float': 'f4', 'double': 'f8', 'int8': 'i1', 'uint8': 'u1', 'int16': 'i2', 'uint16': 'u2',
             'int32': 'i4', 'uint32': 'u4', 'float32': 'f4', 'float64': 'f8'}
PCD_KEYWORDS = ('VERSION', 'FIELDS', 'SIZE', 'TYPE', 'COUNT', 'WIDTH', 'HEIGHT', 'VIEWPOINT', 'POINTS', 'DATA')
PCD_TYPES = {('F', '4'): 'f4', ('F', '8'): 'f8', ('I', '1'): 'i1', ('I', '2'): 'i2', ('I', '4'): 'i4',
             ('I', '8'): 'i8', ('U', '1'): 'u1', ('U', '2'): 'u2', ('U', '4'): 'u4', ('U', '8'): 'u8'}
PCD_ATTRIBUTES = {'x': 'x', 'y': 'y', 'z': 'z', 'normal_x': 'nx', 'normal_y': 'ny', 'normal_z': 'nz',
                  'intensity': 'intensity'}
PCD_DATA_KINDS = ('ascii', 'binary', 'binary_compressed')


class Column(NamedTuple):
    """One attribute of every point: its values and the type the file stores them in (which sets the scale)."""

    values: np.ndarray
    stored_type: np.dtype


class PlyElement(NamedTuple):
    """An ``element`` of a PLY header: its name, row count and ``(name, numpy type or None for a list)``."""

    name: str
    count: int
    properties: List[Tuple[str, Optional[str]]]


class PcdField(NamedTuple):
    """A field of a PCD header: its name, numpy type and number of values per point."""

    name: str
    type: str
    count: int


def _truncated(path: Path, complete: int, promised: int) -> ValueError:
    return ValueError(f'{path} is truncated or corrupt: its header promises {promised} points but only {complete} '
                      'complete rows follow; re-export or re-copy the file')


def _header_lines(head: bytes, path: Path, format_name: str, last_keyword: str) -> Tuple[List[str], int]:
    """Split ``head`` into header lines up to the one starting with ``last_keyword``; return them and the data start."""
    lines, start = [], 0
    while True:
        end = head.find(b'\n', start)
        if end < 0:
            raise ValueError(f'{path} is not a {format_name} file: no {last_keyword!r} line ends a header in its first '
                             f'{len(head)} bytes (the file is truncated, corrupt or of another format)')
        line = head[start:end].decode('latin-1').strip()
        lines.append(line)
        start = end + 1
        if line.split()[:1] == [last_keyword]:
            return lines, start


def _header_count(text: str, what: str, path: Path) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    raise ValueError(f'{path} has a corrupt header: {what} is {text[:20]!r}, not a whole number from 0 to 10**18')


def _read_records(file: BinaryIO, start: int, dtype: np.dtype, count: int, path: Path) -> np.ndarray:
    """Read ``count`` binary rows of ``dtype`` at ``start`` after checking the file holds all of them."""
    file_size = file.seek(0, 2)
    complete = max(file_size - start, 0) // dtype.itemsize
    if complete < count:
        raise _truncated(path, complete, count)
    file.seek(start)
    return np.frombuffer(file.read(count * dtype.itemsize), dtype)


def _text_rows(file: BinaryIO, start: int, skip: int, count: int) -> List[str]:
    """The non-blank text lines ``skip`` to ``skip + count`` after ``start`` (fewer when the file ends first)."""
    file.seek(start)
    lines = [line for line in file.read().decode('latin-1').splitlines() if line.strip()]
    return lines[skip:skip + count]


def _parse_text_rows(rows: List[str], count: int, width: int, path: Path) -> np.ndarray:
    """Parse ascii rows of ``width`` numbers into a ``[count, width]`` float64 table, refusing missing rows."""
    complete = len(rows) - (1 if rows and len(rows[-1].split()) < width else 0)
    if complete < count:
        raise _truncated(path, complete, count)
    if count == 0:
        return np.empty((0, width))
    try:
        table = np.loadtxt(rows, dtype=np.float64, ndmin=2, comments=None)
    except ValueError as error:
        raise ValueError(f'{path} is corrupt: its rows are not {width} numbers each ({error})') from error
    if table.shape[1] != width:
        raise ValueError(f'{path} is corrupt: its rows hold {table.shape[1]} numbers but the header declares {width} '
                         'values per point')
    return table


def _check_xyz(names: Sequence[str], available: Sequence[str], path: Path) -> None:
    """Refuse a header whose point attributes ``names`` lack x, y or z (``available`` names them as the file does)."""
    missing = [name for name in 'xyz' if name not in names]
    if missing:
        raise ValueError(f'{path} has no {", ".join(missing)} per point (it has {", ".join(available) or "nothing"}); '
                         'a point cloud needs x, y and z')


def _point_table(columns: Dict[str, Column]) -> np.ndarray:
    """Stack x, y, z and every complete attribute group of ``columns`` into a float32 table, converting and
    scaling one column at a time in float64."""
    names = list('xyz') + [name for group in ATTRIBUTE_GROUPS if all(name in columns for name in group)
                           for name in group]
    table = np.empty((len(columns['x'].values), len(names)), np.float32)
    for index, name in enumerate(names):
        values, stored_type = columns[name]
        scale = np.iinfo(stored_type).max if name not in ('x', 'y', 'z') and stored_type.kind in 'iu' else 1
        table[:, index] = values.astype(np.float64) / scale
    return table


def _parse_ply_property(words: List[str], path: Path) -> Tuple[str, Optional[str]]:
    if len(words) == 3 and words[1] in PLY_TYPES:
        return words[2], PLY_TYPES[words[1]]
    if len(words) == 5 and words[1] == 'list' and words[2] in PLY_TYPES and words[3] in PLY_TYPES:
        return words[4], None
    raise ValueError(f'{path} has a corrupt PLY header: {" ".join(words)!r} is not "property <type> <name>" or '
                     f'"property list <count type> <type> <name>" with types among {", ".join(PLY_TYPES)}')


def _parse_ply_header(lines: List[str], path: Path) -> Tuple[str, List[PlyElement]]:
    """Return the byte order ('' for ascii) and the elements of a PLY header (its lines from 'ply' to 'end_header')."""
    byte_order, elements = None, []
    for line in lines[1:-1]:
        words = line.split()
        if not words or words[0] in ('comment', 'obj_info'):
            continue
        if words[0] == 'format' and len(words) == 3 and words[1] in PLY_FORMATS:
            byte_order = PLY_FORMATS[words[1]]
        elif words[0] == 'element' and len(words) == 3:
            elements.append(PlyElement(words[1], _header_count(words[2], f'the {words[1]} count', path), []))
        elif words[0] == 'property' and elements:
            elements[-1].properties.append(_parse_ply_property(words, path))
        else:
            raise ValueError(f'{path} has a corrupt PLY header: line {line!r} is not a format (ascii, '
                             'binary_little_endian, binary_big_endian), element, property or comment line')
    if byte_order is None:
        raise ValueError(f'{path} has a corrupt PLY header: it has no "format ascii|binary_little_endian|'
                         'binary_big_endian 1.0" line')
    return byte_order, elements


def _ply_vertex(elements: List[PlyElement], path: Path) -> int:
    """The index of the vertex element, whose properties must be scalars and include x, y, z."""
    names = [element.name for element in elements]
    if 'vertex' not in names:
        raise ValueError(f'{path} has no vertex element (it has {", ".join(names) or "none"}), so it holds no points')
    vertex = elements[names.index('vertex')]
    lists = [name for name, stored_type in vertex.properties if stored_type is None]
    if lists:
        raise ValueError(f'{path}: its vertex element has list properties ({", ".join(lists)}); only PLY files whose '
                         'vertex properties are all scalars can be read')
    available = [name for name, _ in vertex.properties]
    _check_xyz(available, available, path)
    return names.index('vertex')


def _ply_binary_start(elements: List[PlyElement], byte_order: str, start: int, path: Path) -> int:
    """Where the vertex rows start in a binary PLY file: after the rows of the elements before it."""
    for element in elements:
        if any(stored_type is None for _, stored_type in element.properties):
            raise ValueError(f'{path}: the {element.name} element before the vertices has list properties; binary PLY '
                             'files can only be read when the elements before the vertices have none')
        start += element.count * _ply_dtype(element, byte_order).itemsize
    return start


def _ply_dtype(element: PlyElement, byte_order: str) -> np.dtype:
    return np.dtype([(f'column{index}', byte_order + stored_type)
                     for index, (_, stored_type) in enumerate(element.properties)])


def _read_ply_header(file: BinaryIO, path: Path) -> Tuple[str, List[PlyElement], int, int]:
    """The byte order ('' for ascii), the elements, the index of the vertex element and where the data starts."""
    head = file.read(HEADER_LIMIT_BYTES)
    if head.split(b'\n', 1)[0].strip() != b'ply':
        raise ValueError(f'{path} is not a PLY file: its first line is not "ply"')
    lines, start = _header_lines(head, path, 'PLY', 'end_header')
    byte_order, elements = _parse_ply_header(lines, path)
    return byte_order, elements, _ply_vertex(elements, path), start


def count_ply_points(path: Path) -> int:
    """The number of vertices a PLY file's header promises (the data is not read).

    Raises:
        ValueError: if the header is not valid PLY or declares no x, y, z vertex properties.
    """
    with open(path, 'rb') as file:
        _, elements, vertex_index, _ = _read_ply_header(file, path)
    return elements[vertex_index].count


def read_ply(path: Path) -> np.ndarray:
    """Read the vertices of a PLY file (see the module docstring for the columns).

    Args:
        path: a ``.ply`` file, ascii or binary.

    Returns:
        ``[P, 3 + C]`` float32: x, y, z, then colours, normals and intensity where the file has them.

    Raises:
        ValueError: if the header is not valid PLY, declares no x, y, z vertex properties, or the file holds fewer
            vertex rows than the header promises.
    """
    with open(path, 'rb') as file:
        byte_order, elements, vertex_index, start = _read_ply_header(file, path)
        vertex = elements[vertex_index]
        names = [name for name, _ in vertex.properties]
        types = [np.dtype(stored_type) for _, stored_type in vertex.properties]
        if byte_order:
            start = _ply_binary_start(elements[:vertex_index], byte_order, start, path)
            records = _read_records(file, start, _ply_dtype(vertex, byte_order), vertex.count, path)
            values = [records[f'column{index}'] for index in range(len(names))]
        else:
            rows = _text_rows(file, start, sum(element.count for element in elements[:vertex_index]), vertex.count)
            values = list(_parse_text_rows(rows, vertex.count, len(names), path).T)
    columns = {}
    for name, column_values, stored_type in zip(names, values, types):
        columns.setdefault(name, Column(column_values, stored_type))
    return _point_table(columns)


def _parse_pcd_fields(entries: Dict[str, List[str]], path: Path) -> List[PcdField]:
    names = entries.get('FIELDS', [])
    if not names:
        raise ValueError(f'{path} is not a PCD file: its header has no FIELDS line')
    sizes, types = entries.get('SIZE', []), entries.get('TYPE', [])
    counts = entries.get('COUNT', ['1'] * len(names))
    if not len(sizes) == len(types) == len(counts) == len(names):
        raise ValueError(f'{path} has a corrupt PCD header: FIELDS names {len(names)} fields but SIZE, TYPE and COUNT '
                         f'give {len(sizes)}, {len(types)} and {len(counts)} values')
    fields = []
    for name, size, kind, count in zip(names, sizes, types, counts):
        if (kind, size) not in PCD_TYPES:
            raise ValueError(f'{path} has a corrupt PCD header: field {name!r} has TYPE {kind} SIZE {size}; PCD types '
                             'are F (SIZE 4 or 8), I and U (SIZE 1, 2, 4 or 8)')
        count = _header_count(count, f'the COUNT of field {name!r}', path)
        if count == 0:
            raise ValueError(f'{path} has a corrupt PCD header: field {name!r} has COUNT 0')
        fields.append(PcdField(name, '<' + PCD_TYPES[kind, size], count))
    return fields


def _pcd_number(entries: Dict[str, List[str]], keyword: str, default: Optional[int], path: Path) -> int:
    if keyword not in entries:
        if default is None:
            raise ValueError(f'{path} has a corrupt PCD header: it has no {keyword} line')
        return default
    if len(entries[keyword]) != 1:
        raise ValueError(f'{path} has a corrupt PCD header: {keyword} must be followed by one number')
    return _header_count(entries[keyword][0], keyword, path)


def _parse_pcd_header(lines: List[str], path: Path) -> Tuple[List[PcdField], int, str]:
    """Return the fields, number of points and DATA kind of a PCD header."""
    entries = {}
    for line in lines:
        words = line.split()
        if not words or words[0].startswith('#'):
            continue
        if words[0] not in PCD_KEYWORDS:
            raise ValueError(f'{path} has a corrupt PCD header: line {line!r} does not start with one of '
                             f'{", ".join(PCD_KEYWORDS)}')
        entries[words[0]] = words[1:]
    fields = _parse_pcd_fields(entries, path)
    width = _pcd_number(entries, 'WIDTH', None, path)
    height = _pcd_number(entries, 'HEIGHT', 1, path)
    points = _pcd_number(entries, 'POINTS', width * height, path)
    if points != width * height:
        raise ValueError(f'{path} has a corrupt PCD header: POINTS {points} is not WIDTH {width} x HEIGHT {height}')
    data_kind = ' '.join(entries['DATA'])
    if data_kind not in PCD_DATA_KINDS:
        raise ValueError(f'{path} has a corrupt PCD header: DATA is {data_kind!r}, not one of '
                         f'{", ".join(PCD_DATA_KINDS)}')
    return fields, points, data_kind


def _lzf_corrupt(path: Path, expected_size: int) -> ValueError:
    return ValueError(f'{path} is truncated or corrupt: its binary_compressed data does not unpack to the '
                      f'{expected_size} bytes its header promises')


def _lzf_decompress(compressed: bytes, expected_size: int, path: Path) -> bytes:
    """Unpack LZF data (PCD's binary_compressed), refusing anything that does not unpack to ``expected_size`` bytes."""
    output, position, end = bytearray(), 0, len(compressed)
    try:
        while position < end:
            control = compressed[position]
            if control < 32:   # a run of control + 1 literal bytes
                output += compressed[position + 1:position + control + 2]
                position += control + 2
                continue
            length = (control >> 5) + 2   # a back reference: copy length bytes from distance bytes back
            if length == 9:
                position += 1
                length += compressed[position]
            distance = ((control & 31) << 8) + compressed[position + 1] + 1
            position += 2
            start = len(output) - distance
            if start < 0 or start + distance + length > expected_size:
                raise _lzf_corrupt(path, expected_size)
            if distance >= length:
                output += output[start:start + length]
            else:   # the copy overlaps what it writes: it repeats the last `distance` bytes
                output += (output[start:] * (length // distance + 1))[:length]
    except IndexError:   # a back reference cut off by the end of the data
        raise _lzf_corrupt(path, expected_size) from None
    if len(output) != expected_size:   # also catches a literal run cut off by the end of the data
        raise _lzf_corrupt(path, expected_size)
    return bytes(output)


def _pcd_compressed_columns(file: BinaryIO, start: int, fields: List[PcdField], points: int,
                            path: Path) -> List[np.ndarray]:
    """Read binary_compressed data: two uint32 sizes, then LZF data holding each field's values one after another."""
    if points == 0:
        return [np.empty(0) for _ in fields]
    row_bytes = sum(np.dtype(field.type).itemsize * field.count for field in fields)
    file_size = file.seek(0, 2)
    file.seek(start)
    sizes = file.read(8)
    if len(sizes) < 8:
        raise _truncated(path, 0, points)
    compressed_size, unpacked_size = struct.unpack('<II', sizes)
    if unpacked_size != points * row_bytes:
        raise ValueError(f'{path} is corrupt: its binary_compressed data unpacks to {unpacked_size} bytes but the '
                         f'header promises {points} points of {row_bytes} bytes')
    if compressed_size > file_size - start - 8:
        raise ValueError(f'{path} is truncated or corrupt: its {points} points are compressed into {compressed_size} '
                         f'bytes but only {file_size - start - 8} bytes follow the header')
    data = _lzf_decompress(file.read(compressed_size), unpacked_size, path)
    columns, offset = [], 0
    for field in fields:
        dtype = np.dtype((field.type, (field.count,)) if field.count > 1 else field.type)
        columns.append(np.frombuffer(data, dtype, count=points, offset=offset))
        offset += points * dtype.itemsize
    return columns


def _pcd_colours(column: Column, from_text: bool) -> Dict[str, Column]:
    """Unpack a 4-byte ``rgb`` / ``rgba`` field (0xAARRGGBB) into uint8 red, green, blue columns."""
    values = column.values
    if not from_text:
        packed = np.ascontiguousarray(values).view('<u4').astype(np.int64)
    elif column.stored_type.kind == 'f':   # PCL writes a float rgb as its integer bits, others as the float itself
        integer = (values == np.floor(values)) & (values >= 0) & (values < 2 ** 32)
        packed = np.where(integer, np.where(integer, values, 0).astype(np.int64),
                          values.astype(np.float32).view(np.uint32))
    else:
        packed = values.astype(np.int64) % 2 ** 32
    return {name: Column((packed >> shift & 255).astype(np.uint8), np.dtype(np.uint8))
            for name, shift in (('red', 16), ('green', 8), ('blue', 0))}


def _read_pcd_header(file: BinaryIO, path: Path) -> Tuple[List[PcdField], int, str, int]:
    """The fields, number of points and DATA kind of a PCD file with x, y, z fields, and where its data starts."""
    lines, start = _header_lines(file.read(HEADER_LIMIT_BYTES), path, 'PCD', 'DATA')
    fields, points, data_kind = _parse_pcd_header(lines, path)
    _check_xyz([PCD_ATTRIBUTES.get(field.name) for field in fields if field.count == 1],
               [field.name for field in fields], path)
    return fields, points, data_kind, start


def count_pcd_points(path: Path) -> int:
    """The number of points a PCD file's header promises (the data is not read).

    Raises:
        ValueError: if the header is not valid PCD or has no x, y, z fields.
    """
    with open(path, 'rb') as file:
        return _read_pcd_header(file, path)[1]


def read_pcd(path: Path) -> np.ndarray:
    """Read the points of a PCD file (see the module docstring for the columns).

    Args:
        path: a ``.pcd`` file with DATA ascii, binary or binary_compressed.

    Returns:
        ``[P, 3 + C]`` float32: x, y, z, then colours, normals and intensity where the file has them.

    Raises:
        ValueError: if the header is not valid PCD, has no x, y, z fields, or the file holds fewer points than the
            header promises.
    """
    with open(path, 'rb') as file:
        fields, points, data_kind, start = _read_pcd_header(file, path)
        if data_kind == 'binary':
            dtype = np.dtype([(f'column{index}', field.type, (field.count,)) if field.count > 1
                              else (f'column{index}', field.type) for index, field in enumerate(fields)])
            records = _read_records(file, start, dtype, points, path)
            values = [records[f'column{index}'] for index in range(len(fields))]
        elif data_kind == 'binary_compressed':
            values = _pcd_compressed_columns(file, start, fields, points, path)
        else:
            width = sum(field.count for field in fields)
            table = _parse_text_rows(_text_rows(file, start, 0, points), points, width, path)
            offsets = np.cumsum([0] + [field.count for field in fields])
            values = [table[:, offset] for offset in offsets[:-1]]
    columns = {}
    for field, field_values in zip(fields, values):
        if field.count == 1 and field.name in PCD_ATTRIBUTES:
            columns.setdefault(PCD_ATTRIBUTES[field.name], Column(field_values, np.dtype(field.type)))
        elif field.count == 1 and field.name in ('rgb', 'rgba') and np.dtype(field.type).itemsize == 4:
            if 'red' not in columns:
                columns.update(_pcd_colours(Column(field_values, np.dtype(field.type)), data_kind == 'ascii'))
    return _point_table(columns)
