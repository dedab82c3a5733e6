"""Optional dependencies (``pip install "sparsevision[EXTRA]"``): imported where a feature needs them."""
import importlib
from types import ModuleType


def import_optional(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``, or an ImportError naming the pip extra that installs it.

    Args:
        module: the module to import, e.g. ``'open3d'``.
        extra: sparsevision's extra that installs it, e.g. ``'open3d'``.
        feature: what needs it, for the message.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as error:  # open3d raises OSError when a system library (libusb) is missing
        raise ImportError(f'{feature} needs {module.split(".")[0]}, which is not usable here ({error}); '
                          f'install it with: pip install "sparsevision[{extra}]"') from error
