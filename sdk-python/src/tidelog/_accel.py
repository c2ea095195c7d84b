"""The compiled extension, :mod:`tidelog._native`, when it is built and allowed; else None.

``pip install`` builds it from ``sdk-python/native`` (Rust, PyO3) when a Rust toolchain is
present; without one the install still succeeds and every caller falls back to the same
logic in pure Python. ``TIDELOG_PURE_PYTHON=1`` (read once, at import) forces the fallback:
the test suite runs both. Callers choose once, at import or construction, never per record.
"""

from __future__ import annotations

import os
from types import ModuleType

native: ModuleType | None = None
if os.environ.get("TIDELOG_PURE_PYTHON", "") in ("", "0"):
    try:
        from . import _native as native
    except ImportError:  # not built: no Rust toolchain when the SDK was installed
        native = None


def describe() -> str:
    """``"native"`` or ``"pure-python"``: which implementation this process runs."""
    return "native" if native is not None else "pure-python"
