"""The masked-reconstruction demo in a checkout: ``python demo/masked_reconstruction_demo.py --help``.

Installed: ``sparsevision-demo masked-reconstruction``.

The code is ``sparsevision/cli/masked_reconstruction_demo.py``.
"""
import sys

from sparsevision.cli.masked_reconstruction_demo import main, parse_args

__all__ = ['main', 'parse_args']

if __name__ == '__main__':
    sys.exit(main())
