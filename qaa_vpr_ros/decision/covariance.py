"""The covariance model: how sure a loop-closure record's ``T_match_query`` is.

A record's covariance (6x6, row-major, ROS order x, y, z, rotation about x, y, z; m^2, rad^2; in
the matched keyframe's base frame) depends on how its transform was obtained
(:data:`TRANSFORM_SOURCES`) and on the decision's confidence:

- :func:`covariance_from_confidence`: the node's covariance, ``covariance_base`` (or
  ``covariance_sequence``) widened up to 10x as the confidence falls to ``min_confidence``;
- :class:`CovarianceModel`: variances per transform source, calibrated against ground truth
  (:meth:`CovarianceModel.calibrate`, from :func:`qaa_vpr_ros.poses.transform_error`);
- :data:`GEOMETRY_ROTATION_VARIANCE`: the rotation variance of a geometrically verified match.

The record (:mod:`qaa_vpr_ros.decision.record`) carries the numbers and converts them between
frames; this module decides them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "GEOMETRY_ROTATION_VARIANCE",
    "TRANSFORM_SOURCES",
    "CovarianceModel",
    "covariance_from_confidence",
]

TRANSFORM_SOURCES = ("geometry", "sequence", "none", "geometry_rotation")
"""How ``relative_*`` was obtained (the table's ``transform_source`` is an index into this tuple:
new values are appended, never reordered):

- ``geometry``: geometric verification with depth (PnP of local features on a keyframe's depth):
  rotation and **metric** translation, with the covariance of that solution;
- ``sequence``: the sequence alignment's along-track offset (no geometry);
- ``none``: nothing (identity, with a covariance as wide as the error of a place match);
- ``geometry_rotation``: geometric verification without depth (essential matrix): the rotation
  (with its covariance), the translation kept from the sequence alignment or identity (with that
  source's covariance): a single camera does not see scale.

Before format 2 of the table's meaning, ``geometry`` was rotation-only (online closures); such
records now read ``geometry_rotation``."""

GEOMETRY_ROTATION_VARIANCE = math.radians(1.0) ** 2
"""Rotation variance (rad^2, each axis) of a geometrically verified match: (1 deg)^2, twice the
worst error test/test_verification.py allows (2 deg) divided by two sigma."""


def covariance_from_confidence(confidence: float, min_confidence: float, base_diagonal: Sequence[float]) -> list[float]:
    """Row-major 6x6 covariance: 10x ``base_diagonal`` at ``min_confidence``, falling linearly in
    ``t = (confidence - min_confidence) / (3 min_confidence)`` to the base at 4x ``min_confidence``.

    variance = base / (0.1 + 0.9 t), t clipped to [0, 1] (NaN confidence: t = 0).
    """
    span = 3.0 * max(min_confidence, 1e-3)
    t = (confidence - min_confidence) / span if math.isfinite(confidence) else 0.0
    t = min(max(t, 0.0), 1.0)
    factor = 1.0 / (0.1 + 0.9 * t)
    cov = [0.0] * 36
    for i, v in enumerate(base_diagonal):
        cov[7 * i] = float(v) * factor
    return cov


@dataclass(frozen=True)
class CovarianceModel:
    """Variances (m^2, rad^2) of ``T_match_query`` per way the transform was obtained.

    Axes are the matched keyframe's base frame: x forward (along track), y left (cross track),
    z up. ``none``: identity transform, so the variance is the spread of where a correct place
    match's query really lies relative to the matched keyframe; ``sequence``: the along-track
    offset of the sequence alignment was applied, leaving its residual; ``geometry``: rotation from
    verification (small), translation from the alignment or none (a monocular essential matrix
    gives only a direction).

    The defaults are placeholders of the right order of magnitude for a 10 m keyframe spacing;
    :meth:`calibrate` replaces them with the spread measured against ground truth.
    """

    none: tuple[float, ...] = (100.0, 4.0, 1.0, 0.01, 0.01, 0.05)
    sequence: tuple[float, ...] = (25.0, 4.0, 1.0, 0.01, 0.01, 0.05)
    geometry: tuple[float, ...] = (25.0, 4.0, 1.0, 0.001, 0.001, 0.001)
    geometry_rotation: tuple[float, ...] = (25.0, 4.0, 1.0, 0.001, 0.001, 0.001)
    # Smallest calibrated variance: (0.5 m)^2, (0.57 deg)^2: a finite calibration sample that happened
    # to show no error on an axis must not make that axis a hard constraint.
    floor: tuple[float, ...] = (0.25, 0.25, 0.25, 1e-4, 1e-4, 1e-4)

    def __post_init__(self) -> None:
        for name in (*TRANSFORM_SOURCES, "floor"):
            given = getattr(self, name)
            try:
                values = tuple(map(float, given))
            except (TypeError, ValueError) as err:
                raise ValueError(f"CovarianceModel.{name} must be 6 numbers, got {given!r}") from err
            if len(values) != 6:
                raise ValueError(f"CovarianceModel.{name} must be 6 numbers, got {len(values)}")
            if any(not (math.isfinite(v) and v > 0.0) for v in values):
                raise ValueError(f"CovarianceModel.{name} must hold 6 finite variances > 0, got {values}")
            object.__setattr__(self, name, values)

    def diagonal(self, source: str) -> tuple[float, ...]:
        """The 6 variances for ``source`` (one of :data:`TRANSFORM_SOURCES`)."""
        if source not in TRANSFORM_SOURCES:
            raise ValueError(f"transform source {source!r} is not one of {list(TRANSFORM_SOURCES)}")
        return getattr(self, source)

    def covariance(self, source: str, confidence: float = 1.0) -> tuple[float, ...]:
        """Row-major 6x6 diagonal covariance for ``source``; a lower ``confidence`` (here a number
        in [0, 1], 1 = sure) widens it, up to 10x at 0, so a back end trusts doubtful matches less."""
        factor = 1.0 / (0.1 + 0.9 * min(max(float(confidence), 0.0), 1.0))
        cov = [0.0] * 36
        for i, v in enumerate(self.diagonal(source)):
            cov[7 * i] = v * factor
        return tuple(cov)

    @staticmethod
    def spread(errors: np.ndarray, floor: Sequence[float]) -> tuple[float, ...]:
        """Per-axis second moment (mean of squares, bias included) of ``errors`` (N, 6)."""
        errors = np.asarray(errors, dtype=np.float64)
        if errors.ndim != 2 or errors.shape[1] != 6 or len(errors) < 2:
            raise ValueError(f"errors must be (N >= 2, 6) (x, y, z, roll, pitch, yaw), got {errors.shape}")
        if not np.all(np.isfinite(errors)):
            raise ValueError("errors hold non-finite values")
        return tuple(max(float(v), f) for v, f in zip(np.mean(errors ** 2, axis=0), floor, strict=True))

    def calibrate(self, errors: dict[str, np.ndarray]) -> CovarianceModel:
        """A model whose variances are the measured spread of transform errors against ground
        truth: ``errors[source]`` is (N, 6): for each *correct* accepted match, the error of the
        estimated ``T_match_query`` (ground truth^-1 * estimate, as x, y, z, roll, pitch, yaw in
        the matched keyframe's frame). Sources without at least 2 errors keep their value."""
        updated = {}
        for source, values in errors.items():
            if source not in TRANSFORM_SOURCES:
                raise ValueError(f"transform source {source!r} is not one of {list(TRANSFORM_SOURCES)}")
            if len(values) >= 2:
                updated[source] = self.spread(values, self.floor)
        return CovarianceModel(**{**asdict(self), **updated})

