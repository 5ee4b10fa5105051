"""Pose tracks interpolated to image stamps, keyframe selection, and WGS84 -> UTM.

Stamps are integer nanoseconds; positions metres; orientations quaternions (qx, qy, qz, qw). The
pose math itself (interpolation, angles) is :mod:`qaa_vpr_ros.poses`.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# slerp, quaternion_angle and yaw_of are re-exported from their home, qaa_vpr_ros.poses.
from qaa_vpr_ros.poses import interpolate_pose, quaternion_angle, slerp, yaw_of

__all__ = [
    "KeyframeSelector",
    "PoseSkip",
    "PoseTrack",
    "SelectionConfig",
    "latlon_to_utm",
    "quaternion_angle",
    "slerp",
    "utm_zone",
    "yaw_of",
]


class PoseSkip(enum.Enum):
    """Why no pose exists for an image stamp."""

    OUTSIDE = "outside the pose range"
    GAP = "in a pose gap"


@dataclass
class PoseTrack:
    """Time-sorted poses of one topic: ``stamps_ns`` (N,), ``positions`` (N, 3), ``orientations`` (N, 4).

    ``max_gap_ns``: images between two poses further apart than this get no pose.
    """

    stamps_ns: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray
    frame_id: str = ""
    utm_zone: str | None = None
    max_gap_ns: int = 2_000_000_000

    @classmethod
    def from_samples(
        cls,
        stamps_ns: Sequence[int],
        positions: Sequence[Sequence[float]],
        orientations: Sequence[Sequence[float]],
        frame_id: str = "",
        utm_zone: str | None = None,
        max_gap_s: float = 2.0,
    ) -> PoseTrack:
        """Sort by stamp, drop repeated stamps (first kept) and normalise the quaternions."""
        stamps = np.asarray(stamps_ns, np.int64).reshape(-1)
        pos = np.asarray(positions, np.float64).reshape(-1, 3)
        quat = np.asarray(orientations, np.float64).reshape(-1, 4)
        if not len(stamps) == len(pos) == len(quat):
            raise ValueError(f"{len(stamps)} stamps, {len(pos)} positions, {len(quat)} orientations")
        order = np.argsort(stamps, kind="stable")
        stamps, pos, quat = stamps[order], pos[order], quat[order]
        keep = np.ones(len(stamps), bool)
        keep[1:] = stamps[1:] != stamps[:-1]
        stamps, pos, quat = stamps[keep], pos[keep], quat[keep]
        norms = np.linalg.norm(quat, axis=1, keepdims=True)
        quat = np.where(norms > 1e-9, quat / np.where(norms > 1e-9, norms, 1.0), [0.0, 0.0, 0.0, 1.0])
        return cls(stamps, pos, quat, frame_id, utm_zone, int(round(max_gap_s * 1e9)))

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def interpolate(
        self, stamp_ns: int
    ) -> tuple[tuple[float, float, float], tuple[float, float, float, float]] | PoseSkip:
        """Pose at ``stamp_ns``: linear in position, slerp in orientation; or why there is none."""
        n = len(self.stamps_ns)
        if n == 0 or stamp_ns < self.stamps_ns[0] or stamp_ns > self.stamps_ns[-1]:
            return PoseSkip.OUTSIDE
        i = int(np.searchsorted(self.stamps_ns, stamp_ns, side="left"))
        if self.stamps_ns[i] == stamp_ns:
            return _as_tuple3(self.positions[i]), _as_tuple4(self.orientations[i])
        t0, t1 = int(self.stamps_ns[i - 1]), int(self.stamps_ns[i])
        if t1 - t0 > self.max_gap_ns:
            return PoseSkip.GAP
        return interpolate_pose((self.positions[i - 1], self.orientations[i - 1]),
                                (self.positions[i], self.orientations[i]), (stamp_ns - t0) / (t1 - t0))


def _as_tuple3(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def _as_tuple4(v: np.ndarray) -> tuple[float, float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))


@dataclass(frozen=True)
class SelectionConfig:
    """Keyframe selection, applied per camera.

    An image becomes a keyframe when at least ``min_interval_s`` passed since the camera's last
    keyframe AND (when a pose is known and a motion threshold is set) the robot moved at least
    ``min_distance_m`` OR turned at least ``min_rotation_rad``. Zero disables a threshold.
    """

    min_interval_s: float = 0.0
    min_distance_m: float = 0.0
    min_rotation_rad: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_interval_s", "min_distance_m", "min_rotation_rad"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass
class KeyframeSelector:
    """Deterministic per-camera keyframe selection (same input order -> same keyframes)."""

    config: SelectionConfig = field(default_factory=SelectionConfig)
    _last: dict[str, tuple[int, tuple[float, ...] | None, tuple[float, ...] | None]] = field(
        default_factory=dict
    )

    def wants(
        self,
        camera: str,
        stamp_ns: int,
        position: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
    ) -> bool:
        """Would this image be a keyframe? Does not change state (call :meth:`accept` for that)."""
        last = self._last.get(camera)
        if last is None:
            return True
        last_stamp, last_position, last_orientation = last
        cfg = self.config
        if (stamp_ns - last_stamp) < cfg.min_interval_s * 1e9:
            return False
        motion_gated = cfg.min_distance_m > 0 or cfg.min_rotation_rad > 0
        if not motion_gated or position is None or last_position is None:
            return True
        moved = math.dist(position, last_position) if cfg.min_distance_m > 0 else -1.0
        turned = (
            quaternion_angle(orientation, last_orientation)
            if cfg.min_rotation_rad > 0 and orientation is not None and last_orientation is not None
            else -1.0
        )
        return (cfg.min_distance_m > 0 and moved >= cfg.min_distance_m) or (
            cfg.min_rotation_rad > 0 and turned >= cfg.min_rotation_rad
        )

    def latest(self) -> dict[str, tuple[int, tuple[float, ...] | None, tuple[float, ...] | None]]:
        """Each camera's latest keyframe (stamp_ns, position, orientation) as :meth:`accept` recorded it."""
        return dict(self._last)

    def restore(self, latest: dict[str, tuple[int, tuple[float, ...] | None, tuple[float, ...] | None]]) -> None:
        """Continue a selection from :meth:`latest` of an earlier pass (a planned build's work unit)."""
        self._last = dict(latest)

    def accept(
        self,
        camera: str,
        stamp_ns: int,
        position: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
    ) -> None:
        """Record that this image became the camera's latest keyframe."""
        self._last[camera] = (
            int(stamp_ns),
            tuple(position) if position is not None else None,
            tuple(orientation) if orientation is not None else None,
        )


# --- WGS84 -> UTM (Krueger series to 3rd order in n: sub-millimetre within a zone) -------------
_WGS84_A = 6378137.0
_WGS84_F = 1.0 / 298.257223563
_UTM_K0 = 0.9996
_UTM_FALSE_EASTING = 500_000.0
_UTM_FALSE_NORTHING_SOUTH = 10_000_000.0
_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def utm_zone(latitude: float, longitude: float) -> str:
    """UTM zone number and latitude band letter, e.g. ``"32V"``, with the Norway/Svalbard exceptions."""
    if not (-80.0 <= latitude <= 84.0) or not math.isfinite(longitude):
        raise ValueError(f"latitude {latitude} is outside UTM's range [-80, 84] (polar regions use UPS)")
    lon = (longitude + 180.0) % 360.0 - 180.0
    number = int((lon + 180.0) // 6.0) + 1
    number = min(number, 60)
    if 56.0 <= latitude < 64.0 and 3.0 <= lon < 12.0:
        number = 32
    elif 72.0 <= latitude <= 84.0 and 0.0 <= lon < 42.0:
        number = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    band = _BANDS[min(int((latitude + 80.0) // 8.0), len(_BANDS) - 1)]
    return f"{number}{band}"


def latlon_to_utm(latitude: float, longitude: float, zone: str | None = None) -> tuple[float, float, str]:
    """WGS84 degrees -> (easting, northing, zone) in metres.

    ``zone`` forces a zone (e.g. the one of a track's first fix, so a track crossing a zone border
    stays continuous); by default the point's own zone is used.
    """
    zone = zone or utm_zone(latitude, longitude)
    number, band = int(zone[:-1]), zone[-1].upper()
    if not 1 <= number <= 60 or band not in _BANDS:
        raise ValueError(f"invalid UTM zone {zone!r}; expected e.g. '32V'")
    n = _WGS84_F / (2.0 - _WGS84_F)
    big_a = _WGS84_A / (1.0 + n) * (1.0 + n * n / 4.0 + n**4 / 64.0)
    alpha = (
        n / 2.0 - 2.0 / 3.0 * n * n + 5.0 / 16.0 * n**3,
        13.0 / 48.0 * n * n - 3.0 / 5.0 * n**3,
        61.0 / 240.0 * n**3,
    )
    phi = math.radians(latitude)
    dlon = math.radians(longitude - (6.0 * number - 183.0))
    c = 2.0 * math.sqrt(n) / (1.0 + n)
    t = math.sinh(math.atanh(math.sin(phi)) - c * math.atanh(c * math.sin(phi)))
    xi = math.atan2(t, math.cos(dlon))
    eta = math.atanh(math.sin(dlon) / math.sqrt(1.0 + t * t))
    easting = eta + sum(a * math.cos(2 * j * xi) * math.sinh(2 * j * eta) for j, a in enumerate(alpha, 1))
    northing = xi + sum(a * math.sin(2 * j * xi) * math.cosh(2 * j * eta) for j, a in enumerate(alpha, 1))
    false_northing = 0.0 if band >= "N" else _UTM_FALSE_NORTHING_SOUTH
    return (
        _UTM_FALSE_EASTING + _UTM_K0 * big_a * easting,
        false_northing + _UTM_K0 * big_a * northing,
        zone,
    )
