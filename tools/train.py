"""Train a sparsevision model from a config (OpenMMLab contract).

Installed, the same is ``sparsevision-train``; the code is ``sparsevision/cli/train.py``.
"""
from sparsevision.cli.train import main, run

__all__ = ['main']

if __name__ == '__main__':
    run()
