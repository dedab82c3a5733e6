"""The pcd demo in a checkout: ``python demo/pcd_demo.py --help`` (installed: ``sparsevision-demo pcd``).

The code is ``sparsevision/cli/pcd_demo.py``.
"""
import sys

from sparsevision.cli.pcd_demo import main, parse_args

__all__ = ['main', 'parse_args']

if __name__ == '__main__':
    sys.exit(main())
