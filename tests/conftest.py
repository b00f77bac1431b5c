"""Shared test setup.

The repository root goes on ``sys.path`` so a plain ``pytest`` (the script, which unlike ``python -m pytest`` does not
add the working folder) imports ``a2v_het`` and ``data_tools`` from this checkout without ``pip install -e .``.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
