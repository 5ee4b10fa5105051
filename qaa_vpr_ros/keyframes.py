"""Pose tracks interpolated to image stamps, keyframe selection, and WGS84 -> UTM.

Stamps are integer nanoseconds; positions metres; orientations quaternions (qx, qy, qz, qw). The
pose math itself (interpolation, angles) is :mod:`qaa_vpr_ros.poses`.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

# slerp, quaternion_angle and yaw_of are re-exported from their home, qaa_vpr_ros.poses.
from qaa_vpr_ros.poses import interpolate_pose, quaternion_angle, slerp, yaw_of

if TYPE_CHECKING:  # local features need cv2: imported only where the view rule runs
    from qaa_vpr_ros.local_features import LocalFeatures

__all__ = [
    "KeyframeSelector",
    "PoseSkip",
    "PoseTrack",
    "Selected",
    "SelectionConfig",
    "latlon_to_utm",
    "quaternion_angle",
    "slerp",
    "utm_zone",
    "view_changed",
    "view_overlap",
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
    ``min_distance_m`` OR turned at least ``min_rotation_rad`` OR (where local features exist,
    :meth:`KeyframeSelector.decide`'s ``view``) the view changed: less than ``min_view_overlap``
    of the image's features match the camera's last keyframe's. Zero disables a threshold.
    """

    min_interval_s: float = 0.0
    min_distance_m: float = 0.0
    min_rotation_rad: float = 0.0
    min_view_overlap: float = 0.0  # share of the image's features matched to the last keyframe's, [0, 1]

    def __post_init__(self) -> None:
        for name in ("min_interval_s", "min_distance_m", "min_rotation_rad", "min_view_overlap"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.min_view_overlap > 1:
            raise ValueError(f"min_view_overlap is a share of features in [0, 1], got {self.min_view_overlap}")


class Selected(enum.Enum):
    """Why :meth:`KeyframeSelector.decide` takes an image as a keyframe."""

    FIRST = "the camera's first image"
    MOTION = "interval passed and moved or turned enough (or no motion rule applies)"
    VIEW = "the view changed (too few features match the last keyframe's)"


# The view rule's features of an image, computed only when needed (None: it has none).
ViewFeatures = Callable[[], "LocalFeatures | None"]


@dataclass
class KeyframeSelector:
    """Deterministic per-camera keyframe selection (same input order -> same keyframes)."""

    config: SelectionConfig = field(default_factory=SelectionConfig)
    _last: dict[str, tuple[int, tuple[float, ...] | None, tuple[float, ...] | None]] = field(
        default_factory=dict
    )
    # Each camera's last keyframe's features for the view rule, computed on first use (None: none).
    _view: dict[str, ViewFeatures] = field(default_factory=dict)

    def wants(
        self,
        camera: str,
        stamp_ns: int,
        position: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
        view: ViewFeatures | None = None,
    ) -> bool:
        """Would this image be a keyframe? Does not change state (call :meth:`accept` for that)."""
        return self.decide(camera, stamp_ns, position, orientation, view) is not None

    def decide(
        self,
        camera: str,
        stamp_ns: int,
        position: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
        view: ViewFeatures | None = None,
    ) -> Selected | None:
        """Why this image would be a keyframe, or None. ``view`` computes the image's local
        features; it is called only when the interval passed, the pose rules skip the image and
        the view rule is on and has the last keyframe's features (features cost far more than
        poses). Does not change state."""
        last = self._last.get(camera)
        if last is None:
            return Selected.FIRST
        last_stamp, last_position, last_orientation = last
        cfg = self.config
        if (stamp_ns - last_stamp) < cfg.min_interval_s * 1e9:
            return None
        motion_gated = cfg.min_distance_m > 0 or cfg.min_rotation_rad > 0
        if not motion_gated or position is None or last_position is None:
            return Selected.MOTION
        moved = math.dist(position, last_position) if cfg.min_distance_m > 0 else -1.0
        turned = (
            quaternion_angle(orientation, last_orientation)
            if cfg.min_rotation_rad > 0 and orientation is not None and last_orientation is not None
            else -1.0
        )
        if (cfg.min_distance_m > 0 and moved >= cfg.min_distance_m) or (
            cfg.min_rotation_rad > 0 and turned >= cfg.min_rotation_rad
        ):
            return Selected.MOTION
        if cfg.min_view_overlap > 0 and view is not None and camera in self._view:
            reference = self._view[camera]()
            if reference is not None:
                current = view()
                if current is not None and view_changed(current, reference, cfg.min_view_overlap):
                    return Selected.VIEW
        return None

    def latest(self) -> dict[str, tuple[int, tuple[float, ...] | None, tuple[float, ...] | None]]:
        """Each camera's latest keyframe (stamp_ns, position, orientation) as :meth:`accept` recorded it."""
        return dict(self._last)

    def restore(self, latest: dict[str, tuple[int, tuple[float, ...] | None, tuple[float, ...] | None]]) -> None:
        """Continue a selection from :meth:`latest` of an earlier pass (a planned build's work unit);
        the view rule's features come with :meth:`restore_view`."""
        self._last = dict(latest)
        self._view = {}

    def restore_view(self, camera: str, view: ViewFeatures) -> None:
        """Give the camera's latest keyframe (from :meth:`restore`) its features for the view rule."""
        self._view[camera] = _once(view)

    def accept(
        self,
        camera: str,
        stamp_ns: int,
        position: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
        view: ViewFeatures | None = None,
    ) -> None:
        """Record that this image became the camera's latest keyframe; ``view`` computes its
        features when the view rule first needs them (None: this keyframe has none, the view
        rule waits for the next keyframe that has)."""
        self._last[camera] = (
            int(stamp_ns),
            tuple(position) if position is not None else None,
            tuple(orientation) if orientation is not None else None,
        )
        if view is None:
            self._view.pop(camera, None)
        else:
            self._view[camera] = _once(view)


def _once(compute: ViewFeatures) -> ViewFeatures:
    """``compute``, called at most once (its result kept)."""
    done: list = []

    def cached() -> LocalFeatures | None:
        if not done:
            done.append(compute())
        return done[0]

    return cached


# Fewer features than this on the current image: the view rule does not decide (a blank or
# blurred frame is no new view); the reference with fewer is a view that cannot be verified.
VIEW_MIN_FEATURES = 30
VIEW_RATIO = 0.8  # Lowe's ratio test: what verify_features matches with (FeatureVerificationConfig.ratio)


def view_overlap(current: LocalFeatures, reference: LocalFeatures, ratio: float = VIEW_RATIO) -> float:
    """Share of ``current``'s local features whose ratio-test match (the matching of
    :func:`qaa_vpr_ros.verification.verify_features`) is in ``reference``; NaN without features."""
    from qaa_vpr_ros.local_features import match_features  # cv2: only where features exist

    if len(current) == 0:
        return math.nan
    if len(reference) < 2:  # the ratio test needs two neighbours
        return 0.0
    rows, _ = match_features(current, reference, ratio)
    return len(rows) / len(current)


def view_changed(current: LocalFeatures, reference: LocalFeatures, min_overlap: float) -> bool:
    """The view rule: ``current`` (with at least VIEW_MIN_FEATURES features) shares less than
    ``min_overlap`` of its features with ``reference``."""
    if len(current) < VIEW_MIN_FEATURES:
        return False
    if len(reference) < VIEW_MIN_FEATURES:
        return True
    return view_overlap(current, reference) < min_overlap


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
