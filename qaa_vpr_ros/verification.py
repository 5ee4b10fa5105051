"""Geometric verification of a place match: OpenCV features + RANSAC, relative pose, or rejection.

:func:`verify_features` (what the node and the map tools use) works on stored local features
(:mod:`qaa_vpr_ros.local_features`): PnP on depth gives a metric relative pose with a covariance,
the essential matrix a rotation and a direction; see its docstring.

:func:`verify_pair` works on two images: given the query image, the matched keyframe's image and
the cameras' intrinsics (``sensor_msgs/CameraInfo`` ``K``: :meth:`Intrinsics.from_camera_info`, or parameters), this
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

import math
from dataclasses import dataclass

import cv2
import numpy as np

from qaa_vpr_ros.local_features import Intrinsics, LocalFeatures, gray_image, match_features, parse_intrinsics
from qaa_vpr_ros.poses import rotation_angle

__all__ = ["REJECTIONS", "ROBUST_METHOD", "FeatureVerificationConfig", "Intrinsics",
           "Verification", "VerificationConfig", "parse_intrinsics", "verify_features", "verify_pair"]

# One robust estimator on every OpenCV we support (setup.py: 4.x and 5.x), so both decide alike
# (test/test_verification_opencv_majors.py). The classic five-point RANSAC/LMEDS path of
# findEssentialMat asserts in solvePoly on OpenCV 5.1; USAC's LO-RANSAC runs the same code on both
# majors. (USAC_MAGSAC fits homographies badly with thresholds in normalized coordinates.)
ROBUST_METHOD = cv2.USAC_DEFAULT

# Classes of Verification.rejection, one counter each in the node's /diagnostics.
REJECTIONS = ("features", "matches", "inliers", "inlier_ratio", "geometry", "opencv_error", "error", "disagreement")


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
    # Metric verification (verify_features with depth, model "pnp"): the query camera's position in
    # the matched camera's optical frame (metres), and the 6x6 covariance of the query camera's pose
    # there (x, y, z, then a small rotation about x, y, z applied on the left; m^2, rad^2).
    translation: np.ndarray | None = None
    covariance: np.ndarray | None = None
    inlier_ratio: float = math.nan
    disagreement_deg: float = math.nan  # PnP both ways: rotation between the two solutions

    @property
    def metric(self) -> bool:
        """True when :attr:`translation` is metric (PnP with depth)."""
        return self.accepted and self.translation is not None

    @property
    def matrix(self) -> np.ndarray:
        """4x4 ``T_match_query`` between the optical frames (translation zero unless :attr:`metric`)."""
        out = np.eye(4)
        out[:3, :3] = self.rotation
        if self.translation is not None:
            out[:3, 3] = self.translation
        return out

    @property
    def rotation_angle_rad(self) -> float:
        """Angle of :attr:`rotation`."""
        return float(rotation_angle(self.rotation))


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
    gray_q, gray_m = gray_image(query, "query"), gray_image(match, "match")
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


# ---------------------------------------------------------------------------------------------
# Verification from stored local features (maps and the online database keep features, not images).


@dataclass(frozen=True)
class FeatureVerificationConfig:
    """Thresholds of :func:`verify_features` (docs/NODE.md "Geometric verification").

    Measured on TUM fr1/rpy (real Kinect, 89 revisits, docs/MAPS.md): PnP at 3 px on the matched
    keyframe's depth gives 2.7 cm / 1.6 deg median; gating at 30 inliers leaves 2 of 507 revisits
    > 10 cm or 5 deg. ``covariance_scale`` widens the PnP Jacobian's standard deviations, which
    see only the pixel noise (4-10x overconfident measured), ``covariance_floor_*`` adds what no
    pixel shows (depth noise, rolling shutter) in quadrature.
    """

    ratio: float = 0.8  # Lowe's ratio test, query -> match
    min_features: int = 30  # fewer on either side: cannot verify (not a rejection: tiny images)
    min_matches: int = 30  # = min_inliers: fewer matches cannot give that many inliers
    min_inliers: int = 30
    min_inlier_ratio: float = 0.25  # of the matches the model could use (with depth for PnP)
    pnp_threshold_px: float = 3.0
    pnp_iterations: int = 1000  # 99.9 % at an inlier ratio of 0.3, 98 % at min_inlier_ratio 0.25
    essential_threshold_px: float = 0.5  # MAGSAC++ (measured best without depth)
    confidence: float = 0.999
    max_disagreement_deg: float = 1.5  # PnP both ways (both have depth): their rotations agree this well
    max_disagreement_m: float = 0.10
    covariance_scale: float = 3.0
    covariance_floor_m: float = 0.015
    covariance_floor_rad: float = math.radians(1.2)
    essential_rotation_sigma_rad: float = math.radians(10.0)  # x 1/sqrt(inliers): 1.8 deg at 30
    essential_floor_rad: float = math.radians(1.0)  # without depth, in quadrature

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1 or not 0 < self.min_inlier_ratio <= 1 or self.pnp_threshold_px <= 0:
            raise ValueError(f"FeatureVerificationConfig out of range: {self}")
        if self.min_inliers < 6 or self.covariance_scale <= 0:
            raise ValueError(f"FeatureVerificationConfig: min_inliers >= 6 and covariance_scale > 0, got {self}")




@dataclass
class _Pnp:
    transform: np.ndarray  # 4x4 T_image_object: object-camera points into the image camera
    inliers: int
    usable: int  # matches with depth
    covariance: np.ndarray  # 6x6 of the image camera's pose in the object camera's frame (t, then rotation)


def _pnp(points: np.ndarray, normalized: np.ndarray, focal: float, cfg: FeatureVerificationConfig) -> _Pnp | str:
    """PnP + RANSAC of 3D ``points`` (object camera frame) seen at ``normalized`` image coordinates
    (undistorted), refined on the inliers; or the reason it failed."""
    valid = np.all(np.isfinite(points), axis=1)
    obj, img = points[valid], normalized[valid]
    if len(obj) < cfg.min_inliers:
        return f"{len(obj)} matches with depth < min_inliers {cfg.min_inliers}"
    threshold = cfg.pnp_threshold_px / focal
    for flags in (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_ITERATIVE):
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                obj, img, np.eye(3), None, iterationsCount=cfg.pnp_iterations, reprojectionError=threshold,
                confidence=cfg.confidence, flags=flags)
            break
        except cv2.error:  # SQPnP asserts on a near-degenerate sample (OpenCV 5.1); the iterative solver does not
            if flags == cv2.SOLVEPNP_ITERATIVE:
                raise
    if not ok or inliers is None or len(inliers) < 6:
        return "no PnP solution"
    inliers = inliers.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[inliers], img[inliers], np.eye(3), None, rvec, tvec)
    projected, jacobian = cv2.projectPoints(obj, rvec, tvec, np.eye(3), None)
    residuals = np.linalg.norm(projected.reshape(-1, 2) - img, axis=1)
    mask = residuals < threshold
    n = int(mask.sum())
    if n < 6:
        return "no PnP solution"
    rotation = cv2.Rodrigues(rvec)[0]
    depth_in_image = (obj[mask] @ rotation.T + tvec.ravel())[:, 2]
    if np.mean(depth_in_image > 0) < 0.9 or not np.all(np.isfinite(tvec)):
        return "PnP solution puts the points behind the camera (degenerate)"
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = rotation, tvec.ravel()
    # Covariance of (rvec, tvec) from the Jacobian at the inliers, noise from their residuals.
    jac = jacobian.reshape(-1, 2, jacobian.shape[1])[mask][:, :, :6].reshape(-1, 6)
    sigma2 = float(np.sum(residuals[mask] ** 2) / max(2 * n - 6, 1))
    try:
        cov_params = sigma2 * np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        return "degenerate PnP geometry"
    return _Pnp(transform, n, len(obj), _inverse_pose_covariance(rvec.ravel(), tvec.ravel(), cov_params))


def _inverse_pose_covariance(rvec: np.ndarray, tvec: np.ndarray, cov_params: np.ndarray) -> np.ndarray:
    """Covariance of the camera's pose in the object frame, ``T^-1`` of PnP's ``T = [R(rvec) | tvec]``,
    as (position, small left rotation), propagated from the covariance of (rvec, tvec)."""
    def pose_of(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = cv2.Rodrigues(params[:3])[0]
        return -r.T @ params[3:], r.T

    base = np.concatenate([rvec, tvec])
    position0, rotation0 = pose_of(base)
    jac = np.zeros((6, 6))
    for i in range(6):
        step = np.zeros(6)
        step[i] = 1e-6
        position, rotation = pose_of(base + step)
        jac[:3, i] = (position - position0) / 1e-6
        jac[3:, i] = cv2.Rodrigues(rotation @ rotation0.T)[0].ravel() / 1e-6
    cov = jac @ cov_params @ jac.T
    return 0.5 * (cov + cov.T)


def _inflated(cov: np.ndarray, cfg: FeatureVerificationConfig) -> np.ndarray:
    """The PnP covariance widened for what the Jacobian does not see (class docstring)."""
    floor = np.diag([cfg.covariance_floor_m ** 2] * 3 + [cfg.covariance_floor_rad ** 2] * 3)
    return cfg.covariance_scale ** 2 * cov + floor


def verify_features(query: LocalFeatures, query_intrinsics: Intrinsics, match: LocalFeatures,
                    match_intrinsics: Intrinsics, config: FeatureVerificationConfig | None = None) -> Verification:
    """Verify a place match from stored local features; the transform is ``T_match_query`` between
    the two cameras' optical frames (module docstring).

    - the matched keyframe has depth: PnP + RANSAC of its 3D points against the query's keypoints
      (and, when the query has depth too, the other way round: both must agree within
      ``max_disagreement_*``): rotation and **metric** translation, model ``"pnp"``, with a covariance;
    - only the query has depth: PnP the other way round alone;
    - neither: the essential matrix (MAGSAC++): rotation and the direction of translation, model
      ``"essential"`` (scale must come from elsewhere).

    Fewer than ``min_features`` on either side is ``rejection == "features"`` (the caller treats it
    as "cannot verify"). Never raises for an OpenCV error: a rejection with its reason."""
    cfg = config or FeatureVerificationConfig()
    if len(query) < cfg.min_features or len(match) < cfg.min_features:
        return _rejected("features", f"too few local features (query {len(query)}, match {len(match)}) "
                         f"< min_features {cfg.min_features}")
    try:
        return _verify_features(query, query_intrinsics, match, match_intrinsics, cfg)
    except (cv2.error, np.linalg.LinAlgError) as err:
        return _opencv_error(err)


def _verify_features(query: LocalFeatures, k_q: Intrinsics, match: LocalFeatures, k_m: Intrinsics,
                     cfg: FeatureVerificationConfig) -> Verification:
    rows_q, rows_m = match_features(query, match, cfg.ratio)
    matches = len(rows_q)
    if matches < cfg.min_matches:
        return _rejected("matches", f"{matches} feature matches < min_matches {cfg.min_matches}", matches)
    n_q, n_m = query.normalized(k_q)[rows_q], match.normalized(k_m)[rows_m]
    forward = backward = None
    if match.has_depth:  # match's 3D points seen by the query camera: T_query_match
        forward = _pnp(match.points3d(k_m)[rows_m], n_q, k_q.focal, cfg)
    if query.has_depth and not isinstance(forward, str):  # query's 3D points seen by the match camera
        backward = _pnp(query.points3d(k_q)[rows_q], n_m, k_m.focal, cfg)
    if forward is not None or backward is not None:
        failed = [s for s in (forward, backward) if isinstance(s, str)]
        if failed:  # both ways when both have depth: each must hold (a lone degenerate solution is caught)
            return _rejected("inliers", f"PnP failed: {'; '.join(failed)}", matches,
                             max((s.inliers for s in (forward, backward) if isinstance(s, _Pnp)), default=0))
        # T_match_query from each, with the covariance of the query camera pose in the match frame.
        estimates = []
        if isinstance(forward, _Pnp):
            estimates.append((np.linalg.inv(forward.transform), forward.covariance, forward))
        if isinstance(backward, _Pnp):
            t = backward.transform
            # backward's covariance is of the match camera in the query frame: re-express it.
            estimates.append((t, _swap_covariance(t, backward.covariance), backward))
        best_t, best_cov, best = max(estimates, key=lambda e: e[2].inliers)
        ratio = best.inliers / max(best.usable, 1)
        if best.inliers < cfg.min_inliers:
            return _rejected("inliers", f"{best.inliers} PnP inliers < min_inliers {cfg.min_inliers}", matches,
                             best.inliers)
        if ratio < cfg.min_inlier_ratio:
            return _rejected("inlier_ratio", f"PnP inlier ratio {ratio:.2f} < min_inlier_ratio {cfg.min_inlier_ratio}",
                             matches, best.inliers)
        disagreement = math.nan
        if len(estimates) == 2:
            a, b = estimates[0][0], estimates[1][0]
            disagreement = math.degrees(rotation_angle(a[:3, :3].T @ b[:3, :3]))
            gap = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
            if min(e[2].inliers for e in estimates) < cfg.min_inliers:
                weaker = min(e[2].inliers for e in estimates)
                return _rejected("inliers", f"PnP both ways: the weaker has {weaker} inliers < min_inliers "
                                 f"{cfg.min_inliers}", matches, best.inliers)
            if disagreement > cfg.max_disagreement_deg or gap > cfg.max_disagreement_m:
                return _rejected("disagreement", f"PnP both ways disagree by {disagreement:.2f} deg, {gap:.3f} m "
                                 f"(max {cfg.max_disagreement_deg} deg, {cfg.max_disagreement_m} m)",
                                 matches, best.inliers)
        direction = best_t[:3, 3] / max(float(np.linalg.norm(best_t[:3, 3])), 1e-12)
        return Verification(True, "", "pnp", matches, best.inliers, best_t[:3, :3], direction,
                            translation=best_t[:3, 3].copy(), covariance=_inflated(best_cov, cfg),
                            inlier_ratio=ratio, disagreement_deg=disagreement)
    return _essential(n_q, n_m, k_q, matches, cfg)


def _swap_covariance(t_match_query: np.ndarray, cov_match_in_query: np.ndarray) -> np.ndarray:
    """Covariance of the query camera's pose in the match frame from that of the match camera's pose
    in the query frame (first-order, by finite differences of the inverse)."""
    t_query_match = np.linalg.inv(t_match_query)

    def inverse(xi: np.ndarray) -> np.ndarray:
        pose = t_query_match.copy()
        pose[:3, 3] += xi[:3]
        pose[:3, :3] = cv2.Rodrigues(xi[3:])[0] @ pose[:3, :3]
        inv = np.linalg.inv(pose)
        rot = cv2.Rodrigues(inv[:3, :3] @ t_match_query[:3, :3].T)[0].ravel()
        return np.concatenate([inv[:3, 3] - t_match_query[:3, 3], rot])

    jac = np.column_stack([inverse(np.eye(6)[i] * 1e-6) / 1e-6 for i in range(6)])
    cov = jac @ cov_match_in_query @ jac.T
    return 0.5 * (cov + cov.T)


def _essential(n_q: np.ndarray, n_m: np.ndarray, k_q: Intrinsics, matches: int,
               cfg: FeatureVerificationConfig) -> Verification:
    """No depth on either side: the essential matrix (rotation, direction of translation), or a
    homography that is a pure rotation (a camera turning on the spot, where the essential matrix is
    degenerate: ORB-SLAM's model selection on inlier counts)."""
    threshold = cfg.essential_threshold_px / k_q.focal
    e, mask = cv2.findEssentialMat(n_m, n_q, np.eye(3), method=cv2.USAC_MAGSAC, prob=cfg.confidence,
                                   threshold=threshold)
    h, h_mask = cv2.findHomography(n_m, n_q, ROBUST_METHOD, 1.5 / k_q.focal, confidence=cfg.confidence)
    e_inliers = int(mask.sum()) if e is not None and mask is not None and e.shape[0] >= 3 else 0
    h_inliers = int(h_mask.sum()) if h is not None and h_mask is not None else 0
    if h_inliers >= cfg.min_inliers and h_inliers >= 0.75 * e_inliers and np.all(np.isfinite(h)) \
            and abs(float(np.linalg.det(h))) > 1e-12:
        rotation, residual = _nearest_rotation(h)
        if residual <= VerificationConfig().max_rotation_residual and h_inliers >= cfg.min_inlier_ratio * matches:
            return _rotation_only(rotation.T, h_inliers, matches, cfg, "rotation")
    if e_inliers == 0:
        return _rejected("geometry", "no essential matrix", matches)
    e = e[:3]
    if e_inliers < cfg.min_inliers:
        return _rejected("inliers", f"{e_inliers} essential-matrix inliers < min_inliers {cfg.min_inliers}",
                         matches, e_inliers)
    if e_inliers < cfg.min_inlier_ratio * matches:
        return _rejected("inlier_ratio", f"inlier ratio {e_inliers / matches:.2f} < min_inlier_ratio "
                         f"{cfg.min_inlier_ratio}", matches, e_inliers)
    front, r, t, _ = cv2.recoverPose(e, n_m, n_q, np.eye(3), mask=mask.copy())
    if front < cfg.min_inliers:  # cheirality: a twisted pair puts the points behind a camera
        return _rejected("geometry", f"{front} inliers in front of both cameras < min_inliers {cfg.min_inliers}",
                         matches, int(front))
    out = _rotation_only(r.T, int(front), matches, cfg, "essential")
    direction = -r.T @ t.ravel()
    out.translation_direction = direction / np.linalg.norm(direction)
    return out


def _rotation_only(rotation: np.ndarray, inliers: int, matches: int, cfg: FeatureVerificationConfig,
                   model: str) -> Verification:
    """An accepted rotation-only verification with its rotation covariance from the inlier count."""
    sigma = cfg.essential_rotation_sigma_rad / math.sqrt(inliers)
    cov = np.zeros((6, 6))
    cov[3:, 3:] = np.eye(3) * (sigma ** 2 + cfg.essential_floor_rad ** 2)
    return Verification(True, "", model, matches, inliers, rotation, np.zeros(3), covariance=cov,
                        inlier_ratio=inliers / matches)
