"""distill3d: distil EG3D into a fast convolutional generator, export it and serve it.

The repository's top-level folders ``models/``, ``training/``, ``export/`` and ``service/`` are
installed as the subpackages ``distill3d.models`` and so on (see ``pyproject.toml``).
"""

__version__ = "0.1.0"
