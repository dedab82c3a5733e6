"""sparsevision: sparse vision and 3D perception on one mmengine model zoo.

Importing the package is cheap: the native extension loads with
:mod:`sparsevision.ops`, models with :mod:`sparsevision.models`.
"""
from .model_zoo import create_model, list_models
from .version import __version__

__all__ = ['__version__', 'create_model', 'list_models']
