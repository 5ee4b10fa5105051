"""Local features of a keyframe: what geometric verification needs, stored once per image.

A map keeps, per keyframe, its SIFT keypoints (pixels, as detected: still distorted), their
descriptors (uint8) and, when a registered depth image came with the colour image, each
keypoint's depth (uint16 millimetres, 0 = none), plus each camera's :class:`Intrinsics`. From
those, :meth:`LocalFeatures.normalized` gives the undistorted normalised image coordinates and
:meth:`LocalFeatures.points3d` the 3D points in the camera's optical frame (x right, y down,
z forward), so verification never needs the images again (hloc's layout: extract once, reuse).

Why SIFT (OpenCV's, no extra dependency): on TUM fr1/rpy (real Kinect, motion blur) it gives
2.7 cm / 1.6 deg PnP with depth at 700 features, flat across 500-2000 features, descriptor
coding and solver (docs/MAPS.md "Local features"); its float descriptors are integers 0..255, so
uint8 storage is lossless. 700 features x (8 B keypoint + 128 B descriptor + 2 B depth) is at
most 96.6 kB per keyframe.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["DESCRIPTOR_BYTES", "FeatureConfig", "Intrinsics", "LocalFeatures", "add_depth", "camera_info_topic",
           "extract_local_features", "gray_image", "match_features", "parse_intrinsics"]

DESCRIPTOR_BYTES = 128  # SIFT
MAX_DEPTH_MM = 65535  # uint16


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics (pixels) and optional OpenCV distortion coefficients of one camera
    (``k1 k2 p1 p2 [k3 ...]``, the ``plumb_bob`` / ``rational_polynomial`` order of CameraInfo ``d``)."""

    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.fx, self.fy, self.cx, self.cy)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy}: "
                             "focal lengths must be finite and > 0 (an all-zero CameraInfo K means "
                             "the camera is not calibrated)")
        distortion = tuple(float(v) for v in self.distortion)
        if not all(math.isfinite(v) for v in distortion):
            raise ValueError(f"intrinsics distortion {distortion} holds non-finite values")
        if len(distortion) > 14:
            raise ValueError(f"intrinsics distortion has {len(distortion)} coefficients; OpenCV takes at most 14 "
                             "(k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4 [tx ty]]]])")
        if distortion:  # OpenCV takes 4, 5, 8, 12 or 14: 'k1 k2' means k1 k2 0 0 (radial only), and so on
            size = next(n for n in (4, 5, 8, 12, 14) if n >= len(distortion))
            distortion += (0.0,) * (size - len(distortion))
        if distortion and not any(distortion):
            distortion = ()  # all zero: no distortion (saves undistorting)
        object.__setattr__(self, "distortion", distortion)

    @property
    def matrix(self) -> np.ndarray:
        """3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def focal(self) -> float:
        """Mean focal length (pixels): converts pixel thresholds to normalised coordinates."""
        return 0.5 * (self.fx + self.fy)

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel points (N, 2) as detected -> undistorted normalised image coordinates (N, 2) float64."""
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if not len(pixels):
            return np.zeros((0, 2))
        if not self.distortion:
            return np.column_stack([(pixels[:, 0] - self.cx) / self.fx, (pixels[:, 1] - self.cy) / self.fy])
        return cv2.undistortPoints(pixels.reshape(-1, 1, 2), self.matrix,
                                   np.asarray(self.distortion, np.float64)).reshape(-1, 2)

    def as_list(self) -> list[float]:
        """``[fx, fy, cx, cy, distortion...]`` (the parameter form, :meth:`from_parameter`)."""
        return [self.fx, self.fy, self.cx, self.cy, *self.distortion]

    @classmethod
    def from_camera_info(cls, k: Sequence[float], d: Sequence[float] = ()) -> Intrinsics:
        """From ``sensor_msgs/CameraInfo``'s row-major ``k`` (9 values) and ``d``."""
        k = [float(v) for v in k]
        if len(k) != 9:
            raise ValueError(f"CameraInfo k must have 9 values, got {len(k)}")
        return cls(fx=k[0], fy=k[4], cx=k[2], cy=k[5], distortion=tuple(float(v) for v in d))

    @classmethod
    def from_parameter(cls, values: Sequence[float]) -> Intrinsics:
        """From a parameter ``[fx, fy, cx, cy]`` or ``[fx, fy, cx, cy, k1, k2, p1, p2, k3...]``."""
        values = [float(v) for v in values]
        if len(values) < 4:
            raise ValueError(f"intrinsics parameter needs [fx, fy, cx, cy, distortion...], got {values}")
        return cls(*values[:4], distortion=tuple(values[4:]))


def camera_info_topic(image_topic: str) -> str:
    """The ``sensor_msgs/CameraInfo`` topic beside an image topic (image_transport's rule), where the
    node and ``build_map`` read a camera's intrinsics: ``/ns/image_raw`` and
    ``/ns/image_raw/compressed`` -> ``/ns/camera_info``."""
    base = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    return base.rsplit("/", 1)[0] + "/camera_info"


def parse_intrinsics(text: str) -> dict[str, Intrinsics]:
    """The ``camera_intrinsics`` parameter (and ``build_map --camera-intrinsics``): ``;``-separated
    ``"TOPIC fx fy cx cy [k1 k2 p1 p2 k3]"``."""
    from qaa_vpr_ros.parameter_grammar import parse_topic_numbers

    return parse_topic_numbers(text, "camera_intrinsics", "'TOPIC fx fy cx cy [distortion...]'", 4, more=True,
                               convert=Intrinsics.from_parameter)


@dataclass(frozen=True)
class FeatureConfig:
    """How :func:`extract_local_features` detects: OpenCV SIFT, the ``max_features`` strongest."""

    max_features: int = 700  # <= 96.6 kB per keyframe with depth
    contrast_threshold: float = 0.02  # half SIFT's 0.04: plain indoor walls (TUM: 0.01-0.04 equally accurate)
    min_depth_m: float = 0.1  # depth outside [min, max] is "no depth" (0)
    max_depth_m: float = 65.535  # what uint16 millimetres hold

    def __post_init__(self) -> None:
        if not 1 <= self.max_features <= 100_000 or not self.contrast_threshold > 0:
            raise ValueError(f"FeatureConfig out of range: {self}")
        if not 0 <= self.min_depth_m < self.max_depth_m <= MAX_DEPTH_MM / 1000.0:
            raise ValueError(f"FeatureConfig depth range [{self.min_depth_m}, {self.max_depth_m}] m must lie in "
                             f"[0, {MAX_DEPTH_MM / 1000.0}]")


@dataclass(frozen=True, eq=False)
class LocalFeatures:
    """The local features of one image (module docstring).

    ``keypoints`` (N, 2) float32 pixels as detected; ``descriptors`` (N, 128) uint8; ``depth_mm``
    (N,) uint16 millimetres (0: no valid depth there), or None when the image had no depth image.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    depth_mm: np.ndarray | None = None

    def __post_init__(self) -> None:
        kp, desc, depth = self.keypoints, self.descriptors, self.depth_mm
        if not (isinstance(kp, np.ndarray) and kp.dtype == np.float32 and kp.ndim == 2 and kp.shape[1] == 2):
            raise ValueError(f"LocalFeatures.keypoints must be float32 (N, 2), got {getattr(kp, 'dtype', type(kp))} "
                             f"{getattr(kp, 'shape', '')}")
        if not (isinstance(desc, np.ndarray) and desc.dtype == np.uint8 and desc.shape == (len(kp), DESCRIPTOR_BYTES)):
            raise ValueError(f"LocalFeatures.descriptors must be uint8 ({len(kp)}, {DESCRIPTOR_BYTES}), got "
                             f"{getattr(desc, 'dtype', type(desc))} {getattr(desc, 'shape', '')}")
        if depth is not None and not (isinstance(depth, np.ndarray) and depth.dtype == np.uint16
                                      and depth.shape == (len(kp),)):
            raise ValueError(f"LocalFeatures.depth_mm must be uint16 ({len(kp)},) or None, got "
                             f"{getattr(depth, 'dtype', type(depth))} {getattr(depth, 'shape', '')}")
        if len(kp) and not np.all(np.isfinite(kp)):
            raise ValueError("LocalFeatures.keypoints hold non-finite values")

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def has_depth(self) -> bool:
        """True when a depth image came with the image (some keypoints may still have none)."""
        return self.depth_mm is not None

    @property
    def nbytes(self) -> int:
        """Bytes held: keypoints + descriptors + depth."""
        depth = 0 if self.depth_mm is None else self.depth_mm.nbytes
        return int(self.keypoints.nbytes + self.descriptors.nbytes + depth)

    def normalized(self, intrinsics: Intrinsics) -> np.ndarray:
        """(N, 2) undistorted normalised image coordinates (distortion removed before any geometry)."""
        return intrinsics.undistort(self.keypoints)

    def points3d(self, intrinsics: Intrinsics) -> np.ndarray:
        """(N, 3) float64 points in the camera's optical frame (metres); NaN rows where no depth."""
        out = np.full((len(self), 3), np.nan)
        if self.depth_mm is None or not len(self):
            return out
        z = self.depth_mm.astype(np.float64) / 1000.0
        valid = self.depth_mm > 0
        n = self.normalized(intrinsics)
        out[valid, :2] = n[valid] * z[valid, None]
        out[valid, 2] = z[valid]
        return out

    @staticmethod
    def empty(with_depth: bool = False) -> LocalFeatures:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8),
                             np.zeros(0, np.uint16) if with_depth else None)


def match_features(query: LocalFeatures, reference: LocalFeatures, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches ``(query rows, reference rows)`` of the uint8 SIFT descriptors (L2,
    Lowe's test: the best match is kept when closer than ``ratio`` times the second best). The one
    matching of geometric verification and of keyframe selection's view rule."""
    if len(query) == 0 or len(reference) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query.descriptors.astype(np.float32),
                                                 reference.descriptors.astype(np.float32), k=2)
    good = [(p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if not good:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.asarray(good, np.int64)
    return rows[:, 0], rows[:, 1]


_SIFT_CACHE: dict[tuple[int, float], cv2.Feature2D] = {}


def gray_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 HxW, HxWx1 or RGB HxWx3 -> grey HxW; ValueError naming ``name`` otherwise."""
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


def extract_local_features(image: np.ndarray, depth_m: np.ndarray | None = None,
                           config: FeatureConfig | None = None) -> LocalFeatures:
    """SIFT features of ``image`` (uint8 HxW, HxWx1 or RGB HxWx3), the ``max_features`` strongest
    by response; with ``depth_m`` (float HxW metres registered to the image, any resolution: it is
    sampled at the keypoint scaled to its size; NaN/inf/0 = none), each keypoint's depth.

    Raises ValueError for an image or depth array of the wrong type or shape."""
    cfg = config or FeatureConfig()
    gray = gray_image(image)
    depth_m = _checked_depth(depth_m)
    features = _detect(gray, cfg)
    return features if depth_m is None else _with_depth(features, gray.shape[:2], depth_m, cfg)


def add_depth(features: LocalFeatures, image_shape: tuple[int, ...], depth_m: np.ndarray | None,
              config: FeatureConfig | None = None) -> LocalFeatures:
    """``features`` (of an image of ``image_shape``, extracted without depth) with each keypoint's
    depth from ``depth_m``: what :func:`extract_local_features` with that depth gives. None: as is."""
    depth_m = _checked_depth(depth_m)
    if depth_m is None:
        return features
    return _with_depth(features, tuple(image_shape[:2]), depth_m, config or FeatureConfig())


def _checked_depth(depth_m: np.ndarray | None) -> np.ndarray | None:
    if depth_m is None:
        return None
    depth_m = np.asarray(depth_m)
    if depth_m.ndim == 3 and depth_m.shape[2] == 1:
        depth_m = depth_m[:, :, 0]
    if depth_m.ndim != 2 or depth_m.dtype.kind != "f" or min(depth_m.shape) == 0:
        raise ValueError(f"depth must be a float HxW array in metres, got {depth_m.dtype} {depth_m.shape}")
    return depth_m


def _detect(gray: np.ndarray, cfg: FeatureConfig) -> LocalFeatures:
    key = (cfg.max_features, cfg.contrast_threshold)
    sift = _SIFT_CACHE.get(key)
    if sift is None:  # a SIFT object is stateless between calls; creating one costs ~1 ms
        sift = _SIFT_CACHE.setdefault(key, cv2.SIFT_create(nfeatures=0, contrastThreshold=cfg.contrast_threshold))
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return LocalFeatures.empty()
    order = np.argsort([-k.response for k in keypoints], kind="stable")[: cfg.max_features]
    pts = np.array([keypoints[i].pt for i in order], np.float32).reshape(-1, 2)
    # OpenCV's float SIFT descriptors are integers 0..255 already: uint8 is lossless.
    desc = np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)
    return LocalFeatures(pts, desc)


def _with_depth(features: LocalFeatures, shape: tuple[int, int], depth_m: np.ndarray,
                cfg: FeatureConfig) -> LocalFeatures:
    pts = features.keypoints
    h, w = shape
    dh, dw = depth_m.shape
    u = np.clip(np.rint(pts[:, 0] * (dw / w) + 0.5 * (dw / w - 1)).astype(np.int64), 0, dw - 1)
    v = np.clip(np.rint(pts[:, 1] * (dh / h) + 0.5 * (dh / h - 1)).astype(np.int64), 0, dh - 1)
    z = depth_m[v, u].astype(np.float64)
    ok = np.isfinite(z) & (z >= cfg.min_depth_m) & (z <= cfg.max_depth_m)
    depth = np.where(ok, np.rint(np.where(ok, z, 0.0) * 1000.0), 0).astype(np.uint16)
    return LocalFeatures(pts, features.descriptors, depth)
