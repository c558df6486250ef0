"""scanqc: find bad data in medical imaging datasets.

Importing this package is cheap: it imports neither torch nor Qt. Subpackages, from the
bottom layer up: ``io`` (scans in), ``models`` (networks and bundled weights), ``scoring``
(pure scoring functions), ``batch`` and ``cli`` (one engine for folders), ``widgets``
(the napari glue, the only code importing napari, qtpy or magicgui).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
