"""The keyframe record of a map and its on-disk table (``keyframes.sqlite``: one row per keyframe,
in map order, every column checked for its type when read)."""
from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qaa_vpr_ros.maps.errors import MapError

__all__ = ["Keyframe", "read_keyframes", "write_keyframes"]

_NO_POSE = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class Keyframe:
    """One map keyframe.

    ``position`` (m) and ``orientation`` (qx, qy, qz, qw) are the pose-topic pose interpolated to the
    image stamp, in the map frame (UTM easting/northing/altitude when ``utm_zone`` is set). A map
    built without a pose topic has NaN positions and identity orientations (see ``has_pose``).
    """

    id: int
    stamp_sec: int
    stamp_nanosec: int
    camera: str
    frame_id: str
    position: tuple[float, float, float] = _NO_POSE
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    utm_zone: str | None = None
    source: str = ""

    @property
    def stamp(self) -> float:
        """Image stamp in seconds."""
        return self.stamp_sec + self.stamp_nanosec * 1e-9

    @property
    def stamp_ns(self) -> int:
        """Image stamp in integer nanoseconds."""
        return self.stamp_sec * 1_000_000_000 + self.stamp_nanosec

    @property
    def has_pose(self) -> bool:
        """False for keyframes of a map built without a pose topic."""
        return all(math.isfinite(v) for v in self.position)


_KEYFRAME_COLUMNS = (
    "id", "stamp_sec", "stamp_nanosec", "camera", "frame_id",
    "x", "y", "z", "qx", "qy", "qz", "qw", "utm_zone", "source",
)


def write_keyframes(path: Path, keyframes: Iterable[Keyframe]) -> None:
    """One SQLite table, rows in map order (``row`` column = descriptor row)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE keyframes (row INTEGER PRIMARY KEY, id INTEGER NOT NULL UNIQUE, "
            "stamp_sec INTEGER NOT NULL, stamp_nanosec INTEGER NOT NULL, camera TEXT NOT NULL, "
            "frame_id TEXT NOT NULL, x REAL, y REAL, z REAL, qx REAL, qy REAL, qz REAL, qw REAL, "
            "utm_zone TEXT, source TEXT NOT NULL)"
        )
        db.executemany(
            f"INSERT INTO keyframes (row, {', '.join(_KEYFRAME_COLUMNS)}) VALUES ({', '.join('?' * 15)})",
            (
                (
                    row, kf.id, kf.stamp_sec, kf.stamp_nanosec, kf.camera, kf.frame_id,
                    *(None if math.isnan(v) else float(v) for v in kf.position),
                    *(float(v) for v in kf.orientation), kf.utm_zone, kf.source,
                )
                for row, kf in enumerate(keyframes)
            ),
        )
        db.commit()


_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,), "stamp_sec": (int,), "stamp_nanosec": (int,), "camera": (str,), "frame_id": (str,),
    "x": (int, float, type(None)), "y": (int, float, type(None)), "z": (int, float, type(None)),
    "qx": (int, float), "qy": (int, float), "qz": (int, float), "qw": (int, float),
    "utm_zone": (str, type(None)), "source": (str,),
}


def read_keyframes(path: Path, limit: int | None = None) -> list[Keyframe]:
    """Rows of the keyframe table (at most ``limit``), each column checked for its type."""
    nan = math.nan
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            kind = db.execute("SELECT type FROM sqlite_master WHERE name = 'keyframes'").fetchone()
            if kind is None or kind[0] != "table":  # a view could compute rows without end
                raise MapError(f"{path} has no table 'keyframes'")
            query = f"SELECT {', '.join(_KEYFRAME_COLUMNS)} FROM keyframes ORDER BY row"
            rows = db.execute(query + (f" LIMIT {int(limit)}" if limit is not None else "")).fetchall()
    except sqlite3.DatabaseError as err:
        raise MapError(f"{path} is not a readable keyframe table: {err}") from err
    for n, r in enumerate(rows):
        for column, value in zip(_KEYFRAME_COLUMNS, r, strict=True):
            if not isinstance(value, _COLUMN_TYPES[column]):
                raise MapError(f"{path} row {n}: column {column} holds {type(value).__name__} {value!r}")
        if not 0 <= r[2] < 1_000_000_000:
            raise MapError(f"{path} row {n}: stamp_nanosec {r[2]} is outside 0..999999999")
    return [
        Keyframe(
            id=r[0], stamp_sec=r[1], stamp_nanosec=r[2], camera=r[3], frame_id=r[4],
            position=tuple(nan if v is None else v for v in r[5:8]),
            orientation=(r[8], r[9], r[10], r[11]), utm_zone=r[12], source=r[13],
        )
        for r in rows
    ]
