"""The library imports and works without its extras (spconv, open3d); a feature that needs one names the extra."""
import textwrap

BLOCKED_IMPORTS = '''
import sys

class BlockExtras:
    """Makes ``import spconv`` / ``import open3d`` fail as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('spconv', 'open3d'):
            raise ImportError(f'No module named {name!r} (blocked by the test)')
        return None

sys.meta_path.insert(0, BlockExtras())
'''


def test_library_works_without_spconv_and_open3d(python_process, tmp_path):
    script = BLOCKED_IMPORTS + textwrap.dedent(f'''
        import numpy as np
        import pytest
        import torch

        import sparsevision
        import sparsevision.apis, sparsevision.datasets, sparsevision.models, sparsevision.sparse
        from sparsevision.datasets.point_cloud_io import read_points
        from sparsevision.datasets.shapes import primitive_mesh
        from sparsevision.sparse.interop import to_spconv

        for name in ('resnet18_w16_digits', 'sparse_unet_lidar_scenes', 'e3dsnn_shapes'):
            sparsevision.create_model(name)
        path = {str(tmp_path / 'cloud.ply')!r}
        with open(path, 'w') as handle:
            handle.write('ply\\nformat ascii 1.0\\nelement vertex 2\\nproperty float x\\nproperty float y\\n'
                         'property float z\\nend_header\\n0 0 0\\n1 2 3\\n')
        assert read_points(path).shape == (2, 3)
        with pytest.raises(ImportError, match=r'pip install "sparsevision\\[open3d\\]"'):
            primitive_mesh('box')
        x = sparsevision.sparse.SparseTensor(torch.ones(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2, 2, 2], 1)
        with pytest.raises(ImportError, match=r'pip install "sparsevision\\[spconv\\]"'):
            to_spconv(x)
        assert 'spconv' not in sys.modules and 'open3d' not in sys.modules
        print('ok')
    ''')
    result = python_process(['-c', script])
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-3000:]
