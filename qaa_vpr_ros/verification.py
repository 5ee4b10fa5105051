"""Geometric verification of a place match: OpenCV features + USAC, relative rotation, or rejection.

Given the query image, the matched keyframe's image and the cameras' intrinsics (from a
``sensor_msgs/CameraInfo`` ``K``, see :meth:`Intrinsics.from_camera_info`, or parameters), this
matches SIFT features (Lowe's ratio test), fits both an essential matrix and a homography with
OpenCV's USAC (:data:`ROBUST_METHOD`) and keeps the model that explains the matches better:

- essential matrix (general motion): rotation and the *direction* of translation (a single
  camera cannot see scale);
- homography: either a pure rotation (``H = K_q R K_m^-1``, no translation to speak of) or a
  plane seen from two places (decomposed; translation direction up to the plane's distance).

A candidate is rejected (:attr:`Verification.accepted` False, :attr:`Verification.reason` says
why) when there are too few matches or inliers or the inliers are too small a share of the
matches: unrelated images do not produce a consistent geometry. An OpenCV error is a rejection
too (reason ``"opencv error: ..."``, :attr:`Verification.rejection` ``"opencv_error"``), never an
exception: the caller's other answers go on.

Frames: camera optical frames (x right, y down, z forward). :attr:`Verification.rotation` is
``R_match_query``, the query camera's orientation in the matched camera's frame;
:attr:`Verification.translation_direction` the query camera's position direction in the matched
camera's frame (unit vector, zeros when unknown). To get the base-frame transform apply the
extrinsics: ``T_base_cam * T_match_query(cam) * T_base_cam^-1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from qaa_vpr_ros.local_features import Intrinsics, parse_intrinsics
from qaa_vpr_ros.poses import rotation_angle

__all__ = ["REJECTIONS", "ROBUST_METHOD", "Intrinsics", "KeyframeVerifier", "Verification", "VerificationConfig",
           "parse_intrinsics", "verify_pair"]

# One robust estimator on every OpenCV we support (setup.py: 4.x and 5.x), so both decide alike
# (test/test_verification_opencv_majors.py). The classic five-point RANSAC/LMEDS path of
# findEssentialMat asserts in solvePoly on OpenCV 5.1; USAC's LO-RANSAC runs the same code on both
# majors. (USAC_MAGSAC fits homographies badly with thresholds in normalized coordinates.)
ROBUST_METHOD = cv2.USAC_DEFAULT

# Classes of Verification.rejection, one counter each in the node's /diagnostics.
REJECTIONS = ("features", "matches", "inliers", "inlier_ratio", "geometry", "opencv_error", "error")


@dataclass(frozen=True)
class VerificationConfig:
    """Thresholds of :func:`verify_pair`."""

    max_features: int = 2000
    contrast_threshold: float = 0.02  # SIFT's; lower than its 0.04 default: indoor walls are plain
    ratio: float = 0.8  # Lowe's ratio test
    ransac_threshold_px: float = 1.5
    min_matches: int = 30
    min_inliers: int = 30
    min_inlier_ratio: float = 0.5  # USAC finds more inliers than RANSAC did (0.4): 8.jpg-69.jpg, 32 of 65
    confidence: float = 0.999
    max_rotation_residual: float = 0.05  # homography as pure rotation: max |singular values - 1|

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1 or not 0 < self.min_inlier_ratio <= 1 or self.ransac_threshold_px <= 0:
            raise ValueError(f"VerificationConfig out of range: {self}")


@dataclass
class Verification:
    """The outcome of :func:`verify_pair`."""

    accepted: bool
    reason: str  # why it was rejected ("" when accepted)
    model: str  # "essential", "homography", "rotation" (homography that is a pure rotation) or ""
    matches: int  # feature matches passing the ratio test
    inliers: int  # RANSAC inliers of the chosen model
    rotation: np.ndarray  # 3x3 R_match_query (camera optical frames); identity when rejected
    translation_direction: np.ndarray  # (3,) unit vector, zeros when unknown
    rejection: str = ""  # class of the reason, one of REJECTIONS ("" when accepted)

    @property
    def rotation_angle_rad(self) -> float:
        """Angle of :attr:`rotation`."""
        return float(rotation_angle(self.rotation))


def _gray(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"{name} image must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    if image.ndim == 3:
        if image.shape[2] == 1:
            return image[:, :, 0]
        if image.shape[2] != 3:
            raise ValueError(f"{name} image has {image.shape[2]} channels; expected 1 or 3")
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def _normalized(points: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Pixel points (N, 2) -> undistorted normalized image coordinates (N, 2)."""
    dist = np.asarray(intrinsics.distortion, dtype=np.float64) if intrinsics.distortion else None
    return cv2.undistortPoints(points.reshape(-1, 1, 2), intrinsics.matrix, dist).reshape(-1, 2)


def _rejected(rejection: str, reason: str, matches: int = 0, inliers: int = 0) -> Verification:
    return Verification(False, reason, "", matches, inliers, np.eye(3), np.zeros(3), rejection)


def _opencv_error(err: Exception) -> Verification:
    """An OpenCV assertion (or a numerical failure on its output) as a rejection naming it."""
    text = " ".join(str(err).split()) or repr(err)
    return _rejected("opencv_error", f"opencv error: {type(err).__name__}: {text}")


def _nearest_rotation(m: np.ndarray) -> tuple[np.ndarray, float]:
    """Closest rotation to ``m`` (scaled to unit determinant) and how far ``m`` is from one."""
    m = m / np.cbrt(np.linalg.det(m))
    u, s, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        r = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return r, float(np.max(np.abs(s - 1.0)))


def _from_homography(h: np.ndarray, h_mask: np.ndarray, n_m: np.ndarray, n_q: np.ndarray, matches: int,
                     inliers: int, cfg: VerificationConfig) -> Verification | None:
    """The motion a homography (normalized coordinates) stands for: a pure rotation when it is one,
    else the plane decomposition whose points lie in front of both cameras; None if there is none."""
    if not np.all(np.isfinite(h)) or abs(float(np.linalg.det(h))) < 1e-12:
        return None  # a degenerate fit (USAC on nearly collinear inliers): no motion to read off it
    rotation, residual = _nearest_rotation(h)
    if residual <= cfg.max_rotation_residual:
        # x_q = R_qm x_m; R_match_query is its inverse.
        return Verification(True, "", "rotation", matches, inliers, rotation.T, np.zeros(3))
    _, rotations, translations, normals = cv2.decomposeHomographyMat(h, np.eye(3))
    mask = h_mask.ravel().astype(bool)
    candidates = cv2.filterHomographyDecompByVisibleRefpoints(
        rotations, normals, n_m[mask].reshape(-1, 1, 2).astype(np.float32),
        n_q[mask].reshape(-1, 1, 2).astype(np.float32))
    if candidates is None or not len(candidates):
        return None
    i = int(np.asarray(candidates).ravel()[0])
    r, t = rotations[i], np.asarray(translations[i]).ravel()
    direction = -r.T @ t
    norm = np.linalg.norm(direction)
    return Verification(True, "", "homography", matches, inliers, r.T,
                        direction / norm if norm > 1e-9 else np.zeros(3))


def verify_pair(query: np.ndarray, match: np.ndarray, query_intrinsics: Intrinsics,
                match_intrinsics: Intrinsics | None = None,
                config: VerificationConfig | None = None) -> Verification:
    """Verify that ``query`` and ``match`` (uint8 images, RGB or mono) see the same place.

    ``match_intrinsics`` defaults to ``query_intrinsics`` (same camera). See the module docstring
    for frames. Never raises for "no geometry found" or an OpenCV error: that is a rejection with a
    reason. Raises ValueError only for images that are not uint8 HxW or HxWx3.
    """
    cfg = config or VerificationConfig()
    k_m = match_intrinsics or query_intrinsics
    gray_q, gray_m = _gray(query, "query"), _gray(match, "match")
    try:
        return _verify(gray_q, gray_m, query_intrinsics, k_m, cfg)
    except (cv2.error, np.linalg.LinAlgError) as err:
        return _opencv_error(err)


def _verify(gray_q: np.ndarray, gray_m: np.ndarray, query_intrinsics: Intrinsics, k_m: Intrinsics,
            cfg: VerificationConfig) -> Verification:
    sift = cv2.SIFT_create(nfeatures=cfg.max_features, contrastThreshold=cfg.contrast_threshold)
    kp_m, des_m = sift.detectAndCompute(gray_m, None)
    kp_q, des_q = sift.detectAndCompute(gray_q, None)
    if des_m is None or des_q is None or len(kp_m) < 2 or len(kp_q) < 2:
        return _rejected("features", f"too few features (query {len(kp_q)}, match {len(kp_m)})")
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des_m, des_q, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    if len(good) < cfg.min_matches:
        return _rejected("matches", f"{len(good)} feature matches < min_matches {cfg.min_matches}", len(good))
    pts_m = np.float64([kp_m[g.queryIdx].pt for g in good])
    pts_q = np.float64([kp_q[g.trainIdx].pt for g in good])
    # Both models in normalized coordinates (so two different cameras work); thresholds in pixels.
    n_m, n_q = _normalized(pts_m, k_m), _normalized(pts_q, query_intrinsics)
    focal = 0.5 * (query_intrinsics.fx + query_intrinsics.fy)
    threshold = cfg.ransac_threshold_px / focal
    e, e_mask = cv2.findEssentialMat(n_m, n_q, np.eye(3), method=ROBUST_METHOD, prob=cfg.confidence,
                                     threshold=threshold)
    h, h_mask = cv2.findHomography(n_m, n_q, ROBUST_METHOD, threshold, confidence=cfg.confidence)
    e_inliers = int(e_mask.sum()) if e is not None and e.shape == (3, 3) else 0
    h_inliers = int(h_mask.sum()) if h is not None else 0
    best = max(e_inliers, h_inliers)
    if best < cfg.min_inliers:
        return _rejected("inliers", f"{best} RANSAC inliers < min_inliers {cfg.min_inliers}", len(good), best)
    if best < cfg.min_inlier_ratio * len(good):
        return _rejected("inlier_ratio",
                         f"inlier ratio {best / len(good):.2f} < min_inlier_ratio {cfg.min_inlier_ratio}",
                         len(good), best)
    # Prefer the homography when it explains nearly as many matches: a pure rotation or a plane
    # makes the essential matrix degenerate (ORB-SLAM's model selection, on inlier counts).
    from_h = _from_homography(h, h_mask, n_m, n_q, len(good), h_inliers, cfg) if h_inliers >= cfg.min_inliers else None
    if from_h is not None and h_inliers >= 0.75 * e_inliers:
        return from_h
    if e_inliers == 0:
        return _rejected("geometry", "no essential matrix", len(good), h_inliers)
    mask = e_mask.copy()
    inliers, r, t, _ = cv2.recoverPose(e, n_m, n_q, np.eye(3), mask=mask)
    if inliers < cfg.min_inliers:
        if from_h is not None:
            return from_h
        return _rejected("geometry", f"{inliers} inliers in front of both cameras < min_inliers "
                         f"{cfg.min_inliers}", len(good), int(inliers))
    # x_q = R x_m + t: the query camera centre in the match frame is -R^T t.
    direction = -r.T @ t.ravel()
    return Verification(True, "", "essential", len(good), int(inliers), r.T, direction / np.linalg.norm(direction))


class KeyframeVerifier:
    """Geometric verification of the node's online loop closures (pure Python, thread-safe).

    Keeps the grey images of the last ``max_images`` online keyframes and each camera's
    intrinsics; :meth:`check` verifies a query's accepted online candidate against the matched
    keyframe's image. A rejected candidate is marked not accepted (``reason = "geometry"``), so no
    consumer sees it; an accepted one's :class:`Verification` is kept for its record
    (:meth:`verification_of`). Candidates whose images or intrinsics are missing stay as decided.
    :meth:`check` never raises: any error verifying is a rejection (class ``"error"`` unless
    OpenCV's), counted per class in :attr:`rejections`.
    """

    def __init__(self, max_images: int = 1000, config: VerificationConfig | None = None) -> None:
        import threading
        from collections import OrderedDict

        self.max_images = max_images
        self.config = config or VerificationConfig()
        self._images: OrderedDict[int, tuple[str, np.ndarray]] = OrderedDict()
        self._intrinsics: dict[str, Intrinsics] = {}
        self._verified: dict[tuple[int, int, int], Verification] = {}
        self._lock = threading.Lock()
        self.rejected = 0
        self.verified = 0
        self.rejections = dict.fromkeys(REJECTIONS, 0)  # per Verification.rejection class

    def set_intrinsics(self, camera: str, intrinsics: Intrinsics) -> None:
        with self._lock:
            self._intrinsics[camera] = intrinsics

    def intrinsics(self, camera: str) -> Intrinsics | None:
        with self._lock:
            return self._intrinsics.get(camera)

    def check(self, result: object, image: np.ndarray) -> Verification | None:
        """Verify ``result``'s (a ``QueryResult``) accepted online candidate with the query's
        ``image``, then remember the image under the query's online keyframe id."""
        outcome = None
        channel = getattr(result, "online", None)
        best = channel.best if channel is not None else None
        query = result.query
        if best is not None:
            with self._lock:
                stored = self._images.get(int(best.keyframe.id))
                k_query = self._intrinsics.get(query.camera)
                k_match = self._intrinsics.get(stored[0]) if stored is not None else None
            if stored is not None and k_query is not None and k_match is not None:
                try:
                    outcome = verify_pair(image, stored[1], k_query, k_match, self.config)
                except Exception as err:  # never out of the node's batch: un-accept and count it
                    outcome = _rejected("error", f"verification failed: {err!r}")
                key = (int(best.keyframe.id), int(query.stamp_sec), int(query.stamp_nanosec))
                with self._lock:
                    if outcome.accepted:
                        self.verified += 1
                        self._verified[key] = outcome
                        while len(self._verified) > 100:
                            self._verified.pop(next(iter(self._verified)))
                    else:
                        self.rejected += 1
                        self.rejections[outcome.rejection] = self.rejections.get(outcome.rejection, 0) + 1
                if not outcome.accepted:
                    best.accepted, best.reason = False, "geometry"
        keyframe = getattr(result, "keyframe", None)
        if keyframe is not None and self.max_images > 0:
            try:
                gray = _gray(image, "query")
            except (ValueError, cv2.error):  # not an image to verify with: its revisits stay as decided
                return outcome
            with self._lock:
                self._images[int(keyframe.id)] = (query.camera, gray)
                while len(self._images) > self.max_images:
                    self._images.popitem(last=False)
        return outcome

    def counts(self) -> dict[str, int]:
        """``verified``, ``rejected`` and ``rejected_<class>`` for each of :data:`REJECTIONS`."""
        with self._lock:
            return {"verified": self.verified, "rejected": self.rejected,
                    **{f"rejected_{name}": n for name, n in self.rejections.items()}}

    def verification_of(self, keyframe_id: int, stamp_sec: int, stamp_nanosec: int) -> Verification | None:
        """The accepted verification of the query at that stamp against keyframe ``keyframe_id``."""
        with self._lock:
            return self._verified.get((int(keyframe_id), int(stamp_sec), int(stamp_nanosec)))

    def reset(self) -> None:
        with self._lock:
            self._images.clear()
            self._verified.clear()
