"""Command-line tools: ``sparsevision-train``, ``-test``, ``-publish`` and ``-demo`` (``tools/*.py`` and
``demo/*.py`` in a checkout run the same code)."""
