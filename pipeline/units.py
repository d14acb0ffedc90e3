"""Counts written with SI suffixes (20M FLOPs, 300k parameters), read and written the same way."""
from __future__ import annotations

from typing import Any

_SI = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def format_count(value: int) -> str:
    """20_000_000 -> '20M', 117_000 -> '117k' (4 significant digits): the inverse of ``parse_count``."""
    for suffix, scale in sorted(_SI.items(), key=lambda item: -item[1]):
        if value >= scale:
            return f"{value / scale:.4g}{suffix}"
    return str(value)


def parse_count(value: Any) -> int | None:
    """'20M' -> 20_000_000; returns None when the value is not a positive count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if value > 0 else None
    if isinstance(value, str) and value:
        scale = _SI.get(value[-1], 1)
        number = value[:-1] if value[-1] in _SI else value
        try:
            parsed = float(number) * scale
        except ValueError:
            return None
        return int(parsed) if parsed > 0 else None
    return None
