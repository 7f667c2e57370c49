"""Test-time camera perturbations for robustness sweeps (``tools/camera_ablation.py``).

Each transform changes EXACTLY what its name says and nothing else:

==========================  ============  ==========  ==========
transform                   image pixels  intrinsics  extrinsics
==========================  ============  ==========  ==========
FocalScale 'consistent'     zoomed        fx, fy * s  -
FocalScale 'calib'          -             fx, fy * s  -
FocalScale 'image'          zoomed        -           -
PrincipalPointShift         -             cx, cy + d  -
ExtrinsicNoise              -             -           random
CameraHeightPitchOffset     -             -           offset
CameraDropout               black views   -           -
==========================  ============  ==========  ==========

'consistent' is a different lens, correctly calibrated; 'calib' and the extrinsic transforms are
calibration errors (the scene is seen as before, the model is told something else); 'image' is an
unmodelled lens. A zoom maps pixel ``u -> c + s (u - c)`` about the camera's principal point ``c``
(which therefore stays put), and the same affine updates ``cam2img`` in 'consistent' mode.

Input (``results``): ``img`` a list of N_cam (H, W, 3) arrays (uint8 or float32, raw 0..255 pixels)
and ``cameras`` a ``MultiViewCameras`` without batch dims (``cam2img`` (N_cam, 3, 3), ``lidar2cam``
(N_cam, 4, 4), ``image_size``). Place these transforms after ``LoadMultiViewImages`` and the
resize / crop transforms and before ``NormalizeMultiviewImage`` / ``PadMultiViewImage`` /
``Pack3DDetInputs``: black is pixel value 0 and a zoom acts on the valid image, so normalised
images (``img_norm_cfg`` present) are refused.

Every transform appends what it did to ``results['perturbations']`` (a list of dicts with
``type`` and the applied values, in the order applied).

Camera frame (``sf3d/structures/cameras.py``): x right, y down, z forward. Extrinsic changes act
on camera coordinates, ``lidar2cam' = E @ lidar2cam``, E a rigid transform in the camera frame.

Several frames (``results['num_frames']`` = F > 1, ``NuScenesMultiViewDataset(num_frames=2)``): the
N_cam views are frame-major, view ``f * (N_cam / F) + i`` is physical camera ``i`` in frame ``f``. A
calibration error or a broken camera belongs to the physical camera, so per-camera random draws
(``ExtrinsicNoise``, ``CameraDropout`` 'crash') are made for the N_cam / F cameras and repeated in
every frame, and 'named' drops a camera in every frame; 'frame_lost' stays independent per view
(a lost frame is lost at random in time too). The deterministic transforms apply to all views
alike. With F = 1 (or no ``num_frames``) the draws are exactly those of a single frame.
``CameraHeightPitchOffset`` moves every view along the CURRENT ego up axis; for a previous frame
that is exact while the ego only yaws between the frames (flat ground), else off by about the
height times the change of ego pitch / roll in radians (~1 mm for 0.1 m and 0.5 degrees).

Randomness (``ExtrinsicNoise``, ``CameraDropout``) comes from
``np.random.default_rng([seed, salt, sample])`` with ``sample`` = ``results['sample_idx']`` (or
the CRC32 of ``token`` when there is no index) and ``salt`` fixed per transform type: one seed
gives the same perturbation of a sample in every run, whatever the data loader order or workers.
"""
import math
import numbers
import zlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from sf3d.registry import TRANSFORMS
from sf3d.structures import MultiViewCameras, img_crop, img_resize

from .image import _cv2_matrix, _images

FOCAL_MODES = ('consistent', 'calib', 'image')
DROPOUT_MODES = ('crash', 'frame_lost', 'named')
NOISE_DISTRIBUTIONS = ('normal', 'uniform')
FRAME_LOST_CAMERAS = 6  # RoboBEV Frame Lost: each camera is dropped with probability severity / 6

Triple = Union[float, Sequence[float]]


# ---------------------------------------------------------------------------- helpers

def _cameras(results: Dict, name: str) -> MultiViewCameras:
    """The sample's cameras, checked against ``results['img']`` and the raw-pixel requirement."""
    if 'img_norm_cfg' in results:
        raise ValueError(f'{name} acts on raw 0..255 pixels, but the images are already normalised '
                         '(img_norm_cfg is set): place it before NormalizeMultiviewImage')
    cams = results.get('cameras')
    if not isinstance(cams, MultiViewCameras):
        raise KeyError(f"{name} needs results['cameras'] = MultiViewCameras (run LoadMultiViewImages first), "
                       f'got {type(cams).__name__}')
    if cams.cam2img.dim() != 3:
        raise ValueError(f'{name} works on one sample: cameras must have no batch dims, '
                         f'got cam2img of shape {tuple(cams.cam2img.shape)}')
    imgs = results.get('img')
    if isinstance(imgs, list) and len(imgs) != cams.num_cams:
        raise ValueError(f"{name}: results['img'] has {len(imgs)} views but cameras has {cams.num_cams}")
    return cams


def _frames(results: Dict, num_views: int, name: str) -> Tuple[int, int]:
    """(F, cameras per frame) of a sample with ``num_views`` frame-major views (module docstring)."""
    frames = results.get('num_frames', 1)
    if not _is_int(frames) or frames < 1 or num_views % frames:
        raise ValueError(f"{name}: results['num_frames'] = {frames!r} must be an integer >= 1 that divides the "
                         f'{num_views} views')
    return int(frames), num_views // int(frames)


def _record(results: Dict, **info) -> None:
    results.setdefault('perturbations', []).append(info)


def _sample_rng(results: Dict, seed: int, salt: str) -> np.random.Generator:
    """Generator for one (seed, transform type, sample): see the module docstring."""
    key = results.get('sample_idx')
    if key is None:
        token = results.get('token')
        if token is None:
            raise KeyError("random perturbations are seeded per sample: results needs 'sample_idx' or 'token'")
        key = zlib.crc32(str(token).encode())
    return np.random.default_rng([seed, zlib.crc32(salt.encode()), int(key)])


def _is_number(value) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_seed(seed: int, name: str) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f'{name}: seed must be an integer >= 0, got {seed!r}')
    return int(seed)


def _per_axis(value, count: int, name: str, what: str) -> Tuple[float, ...]:
    """One number for all ``count`` axes, or ``count`` numbers; finite and >= 0."""
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.ndim == 0:
        values = np.full(count, float(values))
    if values.shape != (count,) or not np.isfinite(values).all() or (values < 0).any():
        words = {2: 'two', 3: 'three'}.get(count, str(count))
        raise ValueError(f'{name}: {what} must be one number or {words} numbers, finite and >= 0, got {value!r}')
    return tuple(float(v) for v in values)


def _triple(value: Triple, name: str, what: str) -> Tuple[float, float, float]:
    """A number for all three axes, or three numbers; finite and >= 0."""
    return _per_axis(value, 3, name, what)


def zoom_affine(scale: float, center: Sequence[float]) -> torch.Tensor:
    """(3, 3) float64 pixel affine of a zoom by ``scale`` about ``center`` = (u, v): ``u -> c + s (u - c)``."""
    cu, cv = (float(v) for v in center)
    return img_crop(-cu, -cv) @ img_resize(scale, scale) @ img_crop(cu, cv)


def warp_image(img: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The (H, W, C) image moved by a 3x3 pixel affine (old -> new pixels), same size and dtype;
    bilinear, pixels coming from outside the image are black (0)."""
    h, w = img.shape[:2]
    return cv2.warpAffine(np.ascontiguousarray(img), _cv2_matrix(np.asarray(affine, dtype=np.float64)), (w, h),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def axis_rotation(axis: str, degrees: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``degrees`` about the camera's ``axis`` ('x', 'y' or 'z')."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    if axis == 'x':
        return np.array([[1., 0., 0.], [0., c, -s], [0., s, c]])
    if axis == 'y':
        return np.array([[c, 0., s], [0., 1., 0.], [-s, 0., c]])
    if axis == 'z':
        return np.array([[c, -s, 0.], [s, c, 0.], [0., 0., 1.]])
    raise ValueError(f"axis_rotation: axis must be 'x', 'y' or 'z', got {axis!r}")


def camera_delta(roll: float, pitch: float, yaw: float, translation: Sequence[float] = (0., 0., 0.)) -> np.ndarray:
    """(4, 4) rigid ``E`` for ``lidar2cam' = E @ lidar2cam``: the camera turned by ``Rz(roll) @ Rx(pitch)
    @ Ry(yaw)`` (degrees, about its own z = optical axis, x = right, y = down) and its centre moved by
    ``translation`` (metres, in its own frame). ``E = [R | -R t]``: p_cam' = R (p_cam - t).

    Signs: positive pitch = the (believed) camera looks further down (as ``--rig pitch`` of the
    synthetic generator); positive yaw = it looks further left.
    """
    rot = axis_rotation('z', roll) @ axis_rotation('x', pitch) @ axis_rotation('y', yaw)
    e = np.eye(4)
    e[:3, :3] = rot
    e[:3, 3] = -rot @ np.asarray(translation, dtype=np.float64)
    return e


def _with_lidar2cam(cams: MultiViewCameras, delta: np.ndarray, right: Optional[np.ndarray] = None) -> MultiViewCameras:
    """New cameras with ``lidar2cam' = delta @ lidar2cam @ right`` (delta (4, 4) or (N_cam, 4, 4), right
    (4, 4) or None); the intrinsics and image sizes are copied unchanged."""
    lidar2cam = torch.as_tensor(delta).to(cams.lidar2cam) @ cams.lidar2cam  # (N_cam, 4, 4)
    if right is not None:
        lidar2cam = lidar2cam @ torch.as_tensor(right).to(cams.lidar2cam)
    return MultiViewCameras(cams.cam2img.clone(), lidar2cam,
                            None if cams.image_size is None else cams.image_size.clone())


# ---------------------------------------------------------------------------- intrinsics / zoom

@TRANSFORMS.register_module()
class FocalScale:
    """Scale the focal length by ``scale`` (> 0) about each camera's principal point.

    Modes: ``'consistent'`` zooms the image and updates the intrinsics (fx, fy times ``scale``, a
    different lens correctly calibrated); ``'calib'`` changes the intrinsics only (a calibration
    error); ``'image'`` zooms the image only (an unmodelled lens). The image keeps its size: a zoom
    in (scale > 1) loses the border, a zoom out fills it with black. Records
    ``dict(type='FocalScale', scale, mode)``.
    """

    def __init__(self, scale: float, mode: str = 'consistent'):
        if mode not in FOCAL_MODES:
            raise ValueError(f'FocalScale: mode must be one of {FOCAL_MODES}, got {mode!r}')
        if not (_is_number(scale) and scale > 0):
            raise ValueError(f'FocalScale: scale must be a finite number > 0, got {scale!r}')
        self.scale = float(scale)
        self.mode = mode

    def __call__(self, results: Dict) -> Dict:
        name = type(self).__name__
        cams = _cameras(results, name)
        centers = cams.cam2img[:, :2, 2].double().numpy()  # (N_cam, 2) principal points (cx, cy)
        affines = torch.stack([zoom_affine(self.scale, c) for c in centers])  # (N_cam, 3, 3)
        if self.mode in ('consistent', 'image'):
            results['img'] = [warp_image(img, a) for img, a in zip(_images(results, name), affines.numpy())]
        if self.mode in ('consistent', 'calib'):
            results['cameras'] = cams.image_transform(affines, image_size=cams.image_size)
        _record(results, type=name, scale=self.scale, mode=self.mode)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(scale={self.scale}, mode={self.mode!r})'


@TRANSFORMS.register_module()
class PrincipalPointShift:
    """Calibration error of the principal point: ``cx += du``, ``cy += dv`` (pixels of the image
    at this point of the pipeline) for every camera; images untouched. Records
    ``dict(type='PrincipalPointShift', du, dv)``."""

    def __init__(self, du: float = 0.0, dv: float = 0.0):
        if not (_is_number(du) and _is_number(dv)):
            raise ValueError(f'PrincipalPointShift: du and dv must be finite numbers (pixels), got {du!r}, {dv!r}')
        self.du, self.dv = float(du), float(dv)

    def __call__(self, results: Dict) -> Dict:
        cams = _cameras(results, type(self).__name__)
        results['cameras'] = cams.image_transform(img_crop(-self.du, -self.dv), image_size=cams.image_size)
        _record(results, type=type(self).__name__, du=self.du, dv=self.dv)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(du={self.du}, dv={self.dv})'


# ---------------------------------------------------------------------------- extrinsics

@TRANSFORMS.register_module()
class ExtrinsicNoise:
    """Random calibration error of each camera's pose; images and intrinsics untouched.

    Per camera and sample, ``roll, pitch, yaw`` (degrees, about the camera's own z, x, y axes) and a
    translation ``(tx, ty, tz)`` (in the camera frame) are drawn and ``lidar2cam' = E @ lidar2cam``
    with ``E = camera_delta(roll, pitch, yaw, t)``: the believed camera is turned by
    ``Rz(roll) Rx(pitch) Ry(yaw)`` about its centre and its centre moved by t.

    Args:
        rot_deg: spread of (roll, pitch, yaw) in degrees (one number for all three): the standard
            deviation (``distribution='normal'``) or the maximum (``'uniform'``: U(-max, max)).
        trans_cm: spread of the translation along the camera's (x, y, z), centimetres, likewise.
        distribution: ``'normal'`` or ``'uniform'``.
        seed: integer >= 0; the draws depend only on (seed, sample) (module docstring).

    With F frames (``results['num_frames']``) the draws are made for the N_cam / F physical cameras
    and repeated in every frame: camera i and view i + k N_cam / F get the same E.
    Records ``dict(type='ExtrinsicNoise', seed, rot_deg (N_cam, 3) roll/pitch/yaw drawn,
    trans_m (N_cam, 3) drawn, delta (N_cam, 4, 4) the E applied)`` (per view).
    """

    def __init__(self, rot_deg: Triple = 0.0, trans_cm: Triple = 0.0, distribution: str = 'normal',
                 seed: int = 0):
        if distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(f'ExtrinsicNoise: distribution must be one of {NOISE_DISTRIBUTIONS}, '
                             f'got {distribution!r}')
        self.rot_deg = _triple(rot_deg, 'ExtrinsicNoise', 'rot_deg (roll, pitch, yaw)')
        self.trans_cm = _triple(trans_cm, 'ExtrinsicNoise', 'trans_cm (x, y, z)')
        self.distribution = distribution
        self.seed = _check_seed(seed, 'ExtrinsicNoise')

    def _draw(self, rng: np.random.Generator, spread: Tuple[float, ...], n: int) -> np.ndarray:
        spread = np.asarray(spread)
        if self.distribution == 'normal':
            return rng.standard_normal((n, 3)) * spread
        return rng.uniform(-1.0, 1.0, (n, 3)) * spread

    def __call__(self, results: Dict) -> Dict:
        name = type(self).__name__
        cams = _cameras(results, name)
        frames, per_frame = _frames(results, cams.num_cams, name)
        rng = _sample_rng(results, self.seed, name)
        angles = self._draw(rng, self.rot_deg, per_frame)  # (N_cam / F, 3) roll, pitch, yaw in degrees
        trans = self._draw(rng, self.trans_cm, per_frame) / 100.0  # (N_cam / F, 3) metres
        angles, trans = np.tile(angles, (frames, 1)), np.tile(trans, (frames, 1))  # (N_cam, 3): same in every frame
        delta = np.stack([camera_delta(*a, t) for a, t in zip(angles, trans)])  # (N_cam, 4, 4)
        results['cameras'] = _with_lidar2cam(cams, delta)
        _record(results, type=name, seed=self.seed, rot_deg=angles, trans_m=trans, delta=delta)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(rot_deg={self.rot_deg}, trans_cm={self.trans_cm}, '
                f'distribution={self.distribution!r}, seed={self.seed})')


@TRANSFORMS.register_module()
class CameraHeightPitchOffset:
    """Systematic calibration offset of every camera; images and intrinsics untouched.

    The believed cameras are ``height_m`` metres higher along the vehicle's up axis and pitched by
    ``pitch_deg`` about their own x axis (positive = looking further down): the calibration that
    ``tools/make_synthetic_nuscenes.py --rig height=H,pitch=P`` writes for a re-rendered rig.
    The up axis is the ego z axis expressed in the LiDAR frame, ``lidar2ego[:3, :3]^T e_z``, when
    ``results['lidar2ego']`` is present (the dataset provides it), else the LiDAR z axis. With
    ``T`` the translation by ``height * up``: ``lidar2cam' = camera_delta(0, pitch, 0) @ lidar2cam
    @ T^-1``, so every camera centre moves by exactly ``height * up`` in the LiDAR frame. Records
    ``dict(type='CameraHeightPitchOffset', height_m, pitch_deg, up (3,))``.
    """

    def __init__(self, height_m: float = 0.0, pitch_deg: float = 0.0):
        if not (_is_number(height_m) and _is_number(pitch_deg)):
            raise ValueError(f'CameraHeightPitchOffset: height_m and pitch_deg must be finite numbers, '
                             f'got {height_m!r}, {pitch_deg!r}')
        if abs(pitch_deg) >= 90:
            raise ValueError(f'CameraHeightPitchOffset: pitch_deg must lie in (-90, 90), got {pitch_deg}')
        self.height_m, self.pitch_deg = float(height_m), float(pitch_deg)

    def __call__(self, results: Dict) -> Dict:
        name = type(self).__name__
        cams = _cameras(results, name)
        up = np.array([0.0, 0.0, 1.0])
        if results.get('lidar2ego') is not None:
            up = np.asarray(results['lidar2ego'], dtype=np.float64)[:3, :3].T @ up  # ego z in the LiDAR frame
            up /= np.linalg.norm(up)
        lower = np.eye(4)
        lower[:3, 3] = -self.height_m * up  # T^-1: LiDAR point -> the same point relative to the raised rig
        results['cameras'] = _with_lidar2cam(cams, camera_delta(0.0, self.pitch_deg, 0.0), lower)
        _record(results, type=name, height_m=self.height_m, pitch_deg=self.pitch_deg, up=up)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(height_m={self.height_m}, pitch_deg={self.pitch_deg})'


# ---------------------------------------------------------------------------- dropout

@TRANSFORMS.register_module()
class CameraDropout:
    """Black out whole camera views (pixels 0); cameras and the other views untouched.

    Modes (RoboBEV's protocol for the first two):

    * ``'crash'`` (Cam Crash): ``severity`` cameras, an integer in [0, N_cam / F] (RoboBEV uses 2,
      4, 5), chosen at random per sample and blacked out in every one of the F frames;
    * ``'frame_lost'`` (Frame Lost): each view independently with probability ``severity / 6``,
      ``severity`` in [0, 6] (also across frames);
    * ``'named'``: the cameras named in ``cameras`` (names from ``results['cam_names']``); a
      camera of the first frame ('CAM_FRONT') is dropped in every frame ('CAM_FRONT@prev' too),
      a later frame's view named itself ('CAM_FRONT@prev') only there.

    F = ``results['num_frames']`` (1 if absent); views are frame-major (module docstring).

    ``seed`` (integer >= 0) seeds the random modes per sample (module docstring). Records
    ``dict(type='CameraDropout', mode, severity, seed, dropped=[names], dropped_idx=[indices])``.
    """

    def __init__(self, mode: str = 'crash', severity: Optional[float] = None,
                 cameras: Optional[Sequence[str]] = None, seed: int = 0):
        if mode not in DROPOUT_MODES:
            raise ValueError(f'CameraDropout: mode must be one of {DROPOUT_MODES}, got {mode!r}')
        self.mode = mode
        self.seed = _check_seed(seed, 'CameraDropout')
        self.cameras: Optional[Tuple[str, ...]] = None
        self.severity: Optional[float] = None
        if mode == 'named':
            if severity is not None:
                raise ValueError(f"CameraDropout: mode 'named' takes cameras, not severity (got {severity!r})")
            if isinstance(cameras, str):
                cameras = [cameras]
            if not cameras or not all(isinstance(c, str) for c in cameras):
                raise ValueError(f"CameraDropout: mode 'named' needs cameras = a list of camera names, got {cameras!r}")
            self.cameras = tuple(cameras)
            return
        if cameras is not None:
            raise ValueError(f'CameraDropout: mode {mode!r} takes severity, not cameras (got {cameras!r})')
        if mode == 'crash':
            if not _is_int(severity) or severity < 0:
                raise ValueError(f"CameraDropout: mode 'crash' needs severity = number of cameras to black out "
                                 f'(an integer >= 0), got {severity!r}')
            self.severity = int(severity)
        else:
            if not (_is_number(severity) and 0 <= severity <= FRAME_LOST_CAMERAS):
                raise ValueError(f"CameraDropout: mode 'frame_lost' needs severity in [0, {FRAME_LOST_CAMERAS}] "
                                 f'(drop probability severity / {FRAME_LOST_CAMERAS}), got {severity!r}')
            self.severity = float(severity)

    def _dropped(self, results: Dict, num_cams: int) -> List[int]:
        """Sorted indices of the views to black out."""
        frames, per_frame = _frames(results, num_cams, type(self).__name__)

        def every_frame(cams) -> List[int]:  # physical camera indices -> their views in all frames
            return sorted({f * per_frame + int(i) for i in cams for f in range(frames)})

        if self.mode == 'named':
            names = list(results.get('cam_names') or [])
            if len(names) != num_cams:
                raise KeyError(f"CameraDropout 'named' needs results['cam_names'] with {num_cams} names, got {names}")
            missing = [c for c in self.cameras if c not in names]
            if missing:
                raise ValueError(f'CameraDropout: cameras {missing} are not in this sample\'s cameras {names}')
            idx = [names.index(c) for c in self.cameras]
            return sorted(set(every_frame(i for i in idx if i < per_frame)) | {i for i in idx if i >= per_frame})
        rng = _sample_rng(results, self.seed, type(self).__name__)
        if self.mode == 'crash':
            if self.severity > per_frame:
                raise ValueError(f"CameraDropout 'crash': severity {self.severity} exceeds the {per_frame} cameras")
            return every_frame(rng.choice(per_frame, size=self.severity, replace=False))
        return [i for i, u in enumerate(rng.random(num_cams)) if u < self.severity / FRAME_LOST_CAMERAS]

    def __call__(self, results: Dict) -> Dict:
        name = type(self).__name__
        cams = _cameras(results, name)
        imgs = list(_images(results, name))
        dropped = self._dropped(results, cams.num_cams)
        for i in dropped:
            imgs[i] = np.zeros_like(imgs[i])
        results['img'] = imgs
        names = list(results.get('cam_names') or range(cams.num_cams))
        _record(results, type=name, mode=self.mode, severity=self.severity, seed=self.seed,
                dropped=[names[i] for i in dropped], dropped_idx=dropped)
        return results

    def __repr__(self) -> str:
        what = f'cameras={self.cameras}' if self.mode == 'named' else f'severity={self.severity}'
        return f'{self.__class__.__name__}(mode={self.mode!r}, {what}, seed={self.seed})'


__all__ = ['FocalScale', 'PrincipalPointShift', 'ExtrinsicNoise', 'CameraHeightPitchOffset', 'CameraDropout',
           'camera_delta', 'axis_rotation', 'zoom_affine', 'warp_image']
