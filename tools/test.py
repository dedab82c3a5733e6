"""Evaluate a trained checkpoint on a config's test set (OpenMMLab contract).

Installed, the same is ``sparsevision-test``; the code is ``sparsevision/cli/test.py``.
"""
from sparsevision.cli.test import main, run

__all__ = ['main']

if __name__ == '__main__':
    run()
