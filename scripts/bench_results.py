"""Reading a bench results file (target/bench/*.json) for the summary scripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def getter(data: dict[str, Any]) -> Callable[..., Any]:
    """`get("a", "b")` is `data["a"]["b"]`, or None where a key or a level is missing."""

    def get(*keys: str) -> Any:
        d: Any = data
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    return get
