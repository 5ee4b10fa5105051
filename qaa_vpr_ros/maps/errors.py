"""The map store's errors: every failure to create, load, search or save a map is a :class:`MapError`."""
from __future__ import annotations

__all__ = ["MapError", "MapSaveError"]


class MapError(RuntimeError):
    """A map that cannot be created, loaded, searched or saved (the message says which file/field)."""


class MapSaveError(MapError, OSError):
    """Writing a map failed (full disk, read-only folder); an existing map there is untouched.
    Also an ``OSError``, as the failure underneath it was."""
