"""The one grammar of per-camera string parameters: ``"TOPIC n1 n2 ...; TOPIC n1 n2 ..."``.

``camera_extrinsics`` (``TOPIC x y z qx qy qz qw``) and ``camera_intrinsics``
(``TOPIC fx fy cx cy [distortion...]``) are written this way, in launch files and params files
alike: entries separated by ``;`` (blank ones ignored), each a topic then numbers separated by
whitespace. :func:`parse_topic_numbers` reads it; the parameter's own module turns the numbers
into its type. Standard library only.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["parse_topic_numbers"]

T = TypeVar("T")


def parse_topic_numbers(text: str, name: str, usage: str, count: int, *, more: bool = False,
                        convert: Callable[[tuple[float, ...]], T] | None = None) -> dict[str, T]:
    """``text`` of parameter ``name`` -> ``{topic: convert(numbers)}`` in entry order (a later
    entry of the same topic wins).

    Each entry holds exactly ``count`` numbers (``more``: at least ``count``). ``convert``
    (default: the tuple of numbers itself) raises ValueError for values it cannot take. Every error
    is a ValueError naming the parameter, the entry and ``usage``:
    ``"{name} entry '{entry}': expected {usage}: {reason}"``.
    """
    out: dict[str, T] = {}
    for entry in (e.strip() for e in str(text).split(";")):
        if not entry:
            continue
        topic, *words = entry.split()
        try:
            if len(words) < count or (len(words) > count and not more):
                raise ValueError(f"{len(words)} numbers given, {'at least ' if more else ''}{count} needed")
            numbers = tuple(float(w) for w in words)
            out[topic] = convert(numbers) if convert is not None else numbers  # type: ignore[assignment]
        except ValueError as err:
            raise ValueError(f"{name} entry {entry!r}: expected {usage}: {err}") from err
    return out
