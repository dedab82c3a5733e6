"""The image demo in a checkout: ``python demo/image_demo.py --help`` (installed: ``sparsevision-demo image``).

The code is ``sparsevision/cli/image_demo.py``.
"""
import sys

from sparsevision.cli.image_demo import main, parse_args

__all__ = ['main', 'parse_args']

if __name__ == '__main__':
    sys.exit(main())
