"""Strip a training checkpoint to its weights for the model zoo.

Installed, the same is ``sparsevision-publish``; the code is ``sparsevision/cli/publish_model.py``.
"""
from sparsevision.cli.publish_model import main, run

__all__ = ['main']

if __name__ == '__main__':
    run()
