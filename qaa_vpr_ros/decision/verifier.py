"""Geometric verification of a query's candidates, map and online alike, from stored local features.

The query's local features (SIFT keypoints, descriptors, per-keypoint depth when a depth image was
paired: :mod:`qaa_vpr_ros.local_features`) are matched against each candidate keyframe's stored
ones (the prebuilt map's, or the online database's: features, not images, so nothing is skipped
for its age) and :func:`~qaa_vpr_ros.verification.verify_features` gives the relative pose:

- a candidate the decision accepted and geometry rejects is un-accepted (``reason`` "geometry");
- a candidate geometry verifies *strongly* (``geometry_accept_min_inliers`` PnP/essential inliers
  and ``geometry_accept_min_inlier_ratio``) is accepted at once, without waiting for sequence
  support and also where no rival place exists (a room-sized map), when ``geometry_accept`` is on;
- what cannot be verified (no intrinsics for the query's camera, a keyframe without stored
  features, too few features on either side: 64x32 Nordland images) stays as decided, counted
  per reason (:data:`SKIPS`).

Each verified candidate carries its :class:`~qaa_vpr_ros.verification.Verification`
(``candidate.verification``), from which the records take their transform and covariance.
Thread-safe; never raises out of :meth:`CandidateVerifier.verify`.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import cv2

from qaa_vpr_ros.local_features import Intrinsics, LocalFeatures
from qaa_vpr_ros.verification import (
    REJECTIONS,
    FeatureVerificationConfig,
    Verification,
    _opencv_error,
    _rejected,
    verify_features,
)

if TYPE_CHECKING:
    from qaa_vpr_ros.decision.decision import Candidate, ChannelResult
    from qaa_vpr_ros.decision.localizer import Localizer, QueryResult
    from qaa_vpr_ros.decision.parameters import LocalizeConfig

__all__ = ["SKIPS", "CandidateVerifier"]

SKIPS = ("no_intrinsics", "no_query_features", "no_keyframe_features", "no_keyframe_intrinsics", "few_features")
"""Why a candidate could not be verified (it then stays as the decision left it), one counter each in
``/diagnostics`` as ``verify_skipped_<reason>``."""


class CandidateVerifier:
    """Verifies the top ``verify_candidates`` candidates of each database per query (module docstring)."""

    def __init__(self, config: LocalizeConfig, verification: FeatureVerificationConfig | None = None) -> None:
        self.config = config
        self.verification = verification or FeatureVerificationConfig()
        self._intrinsics: dict[str, Intrinsics] = {}
        self._lock = threading.Lock()
        self.counts_ = {"verified": 0, "verified_pnp": 0, "verified_essential": 0, "verified_rotation": 0,
                        "rejected": 0,
                        "accepted_on_geometry": 0, "unaccepted_by_geometry": 0,
                        **{f"rejected_{name}": 0 for name in REJECTIONS},
                        **{f"skipped_{name}": 0 for name in SKIPS}}

    # --- intrinsics of the node's cameras (CameraInfo or camera_intrinsics) -------------------
    def set_intrinsics(self, camera: str, intrinsics: Intrinsics) -> None:
        with self._lock:
            self._intrinsics[camera] = intrinsics

    def intrinsics(self, camera: str) -> Intrinsics | None:
        with self._lock:
            return self._intrinsics.get(camera)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts_)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts_[key] = self.counts_.get(key, 0) + 1

    # --- verification -------------------------------------------------------------------------
    def verify(self, result: QueryResult, features: LocalFeatures | None, localizer: Localizer) -> list[str]:
        """Verify ``result``'s candidates in place; returns error lines for the log (OpenCV or other
        errors, each also a counted rejection)."""
        errors: list[str] = []
        k_query = self.intrinsics(result.query.camera)
        for channel in (result.map, result.online):
            if channel is None or not (channel.candidates or channel.hits):
                continue
            if k_query is None:
                self._count("skipped_no_intrinsics")
                continue
            if features is None:
                self._count("skipped_no_query_features")
                continue
            self._channel(channel, features, k_query, localizer, errors)
        return errors

    def _channel(self, channel: ChannelResult, features: LocalFeatures, k_query: Intrinsics, localizer: Localizer,
                 errors: list[str]) -> None:
        cfg = self.config
        store = localizer.prior_map if channel.source == "map" else localizer.online_map
        # The accepted one first (always verified), then the best-ranked candidates, then the nearest
        # keyframes by descriptor (verify_candidates of each). The first that settles the query
        # ends it: an accepted candidate that verifies, or a strong one while none is accepted
        # (each verification costs 5-70 ms: a revisit is answered after one or two).
        ranked = channel.candidates[: max(cfg.verify_candidates, 0)]
        chosen = [c for c in channel.candidates if c.accepted]
        chosen += [c for c in ranked if not c.accepted] + channel.hits
        for candidate in chosen:
            outcome = self._one(candidate, features, k_query, store, channel.source)
            if outcome is None:
                continue
            candidate.verification = outcome
            if outcome.rejection in ("opencv_error", "error"):
                errors.append(f"geometric verification of keyframe {candidate.keyframe.id} failed: {outcome.reason}")
            if not outcome.accepted and candidate.accepted:
                candidate.accepted, candidate.reason = False, "geometry"
                self._count("unaccepted_by_geometry")
            if outcome.accepted and (candidate.accepted or (cfg.geometry_accept and channel.best is None
                                                            and self.strong(outcome))):
                break
        if cfg.geometry_accept and channel.best is None:
            strong = [c for c in chosen if self.strong(c.verification)]
            if strong:
                best = max(strong, key=lambda c: c.verification.inliers)
                best.accepted, best.reason = True, "geometry"
                if best not in channel.candidates:  # a search hit: it becomes a candidate (and a record)
                    channel.hits.remove(best)
                    best.rank = len(channel.candidates)
                    channel.candidates.append(best)
                self._count("accepted_on_geometry")

    def strong(self, verification: Verification | None) -> bool:
        """Whether a verification is strong enough to accept its candidate without sequence support."""
        cfg = self.config
        return (verification is not None and verification.accepted
                and verification.model in ("pnp", "essential", "rotation")
                and (verification.model == "pnp" or cfg.geometry_accept_essential)
                and verification.inliers >= cfg.geometry_accept_min_inliers
                and verification.inlier_ratio >= cfg.geometry_accept_min_inlier_ratio)

    def _one(self, candidate: Candidate, features: LocalFeatures, k_query: Intrinsics, store: object,
             source: str) -> Verification | None:
        keyframe = candidate.keyframe
        stored = store.local_features(int(keyframe.id)) if store is not None else None
        if stored is None:
            self._count("skipped_no_keyframe_features")
            return None
        k_match = store.cameras.get(keyframe.camera) if source == "map" else self.intrinsics(keyframe.camera)
        if k_match is None:
            self._count("skipped_no_keyframe_intrinsics")
            return None
        try:
            outcome = verify_features(features, k_query, stored, k_match, self.verification)
        except cv2.error as err:  # never out of the node's batch: a counted rejection, naming it
            outcome = _opencv_error(err)
        except Exception as err:
            outcome = _rejected("error", f"verification failed: {err!r}")
        if outcome.rejection == "features":  # tiny images: cannot verify, not a rejection
            self._count("skipped_few_features")
            return None
        with self._lock:
            if outcome.accepted:
                self.counts_["verified"] += 1
                key = f"verified_{outcome.model}"
                self.counts_[key] = self.counts_.get(key, 0) + 1
            else:
                self.counts_["rejected"] += 1
                key = f"rejected_{outcome.rejection}"
                self.counts_[key] = self.counts_.get(key, 0) + 1
        return outcome
