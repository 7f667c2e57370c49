"""Image-consistent camera-rig augmentation for training (``CameraRigAug``).

A model trained on one camera rig can read depth from rig-specific cues (where the horizon sits,
how large a car of a given depth looks). ``CameraRigAug`` shows it other rigs: per physical camera
and sample it draws a different lens (zoom), a different crop (principal-point shift) and a turned
camera (roll, pitch, yaw), warps the image accordingly and updates ``cam2img`` and ``lidar2cam`` so
that every camera parameter stays EXACT (3D points project onto the pixels that show them).

Maths (camera frame x right, y down, z forward; pixels as in ``sf3d/structures/cameras.py``).
A point ``p`` in camera coordinates is seen at pixel ``x ~ K p`` (homogeneous, ``K = cam2img``).

* Rotation. Turning the camera about its own centre by ``R`` (``camera_delta(roll, pitch, yaw)``
  of ``perturb.py``, so the sign conventions are shared: positive pitch looks further down, positive
  yaw further left) gives camera coordinates ``p' = R p``, i.e. ``lidar2cam' = [[R, 0], [0, 1]] @
  lidar2cam``, and pixels ``x' ~ K R p = (K R K^-1) x``. The map does not depend on the depth of
  ``p``: every ray through the centre stays a ray through the centre, so the homography
  ``K R K^-1`` re-renders the new view EXACTLY from the old image (up to resampling and the
  black region that the old camera did not see).
  This is exact only for a rotation about the camera centre. A translation ``t`` of the centre
  gives ``x' ~ K (R p + t)``, which depends on the depth of every point (parallax: near objects
  move more than far ones, occlusions change), so no image warp can produce it without depth.
  In particular a different mounting HEIGHT cannot be faked this way; a warp that pretends
  otherwise teaches wrong geometry. (Re-render the scene for that, e.g. the synthetic
  generator's ``--rig height=...``.)
* Zoom ``s`` about the principal point ``c``: ``u -> c + s (u - c)`` (``zoom_affine``), a lens
  with focal length times ``s``; shift ``(du, dv)``: ``u -> u + du`` (a crop window moved by
  ``-(du, dv)``, ``img_crop(-du, -dv)``). Together the pixel affine ``A = shift @ zoom``; a new
  lens and crop are exact with ``cam2img' = A @ K``.

Total pixel map (old pixel -> new pixel), per view: ``H = A @ K @ R @ K^-1``; new cameras:
``cam2img' = A @ K`` (``MultiViewCameras.image_transform(A, ...)``) and ``lidar2cam'`` as above,
so that ``cam2img' @ lidar2cam'`` projects every 3D point onto ``H`` of its old pixel. The image is
warped with ``cv2.warpPerspective`` (bilinear, same size, black outside the old image; for large
turns, new pixels whose ray lies behind the old camera are black too).

Input and placement as the transforms of ``perturb.py``: ``results['img']`` a list of N_cam
(H, W, 3) arrays of raw 0..255 pixels (uint8 or float32, dtype kept) and ``results['cameras']``
a ``MultiViewCameras`` without batch dims. Place it after ``ResizeCropFlipMultiView`` and before
``NormalizeMultiviewImage`` (black is pixel value 0): normalised images are refused.

Several frames (``results['num_frames']`` = F): views are frame-major, view ``f * (N_cam / F) + i``
is physical camera ``i`` in frame ``f``. A rig belongs to the physical camera, so the draws are
made for the N_cam / F cameras and repeated in every frame.

Randomness, as ``ResizeCropFlipMultiView``: drawn from ``np.random`` (seeded per worker by the
mmengine runner), so a seeded run is reproducible.
"""
from typing import Dict, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from sf3d.registry import TRANSFORMS
from sf3d.structures import img_crop

from .image import _images
from .perturb import _cameras, _frames, _is_number, _per_axis, _triple, _with_lidar2cam, camera_delta, zoom_affine

Pair = Union[float, Sequence[float]]
Triple = Union[float, Sequence[float]]

# pixel-centre convention (centre of column j at u = j + 0.5) -> cv2's (centre at x = j)
_HALF = np.array([[1., 0., 0.5], [0., 1., 0.5], [0., 0., 1.]])


def _cv2_homography(h: np.ndarray) -> np.ndarray:
    """(3, 3) for cv2.warpPerspective from a homography in the centre-at-j+0.5 convention."""
    return np.linalg.inv(_HALF) @ h @ _HALF


def warp_homography(img: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The (H, W, C) image moved by the 3x3 homography ``h`` (old -> new pixels), same size and dtype;
    bilinear, black (0) where the new pixel comes from outside the image or from a ray behind the old
    camera (``h = A K R K^-1``: the third coordinate of ``h^-1 x'`` is the old-camera depth of the ray)."""
    rows, cols = img.shape[:2]
    out = cv2.warpPerspective(np.ascontiguousarray(img), _cv2_homography(np.asarray(h, dtype=np.float64)),
                              (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    w_row = np.linalg.inv(h)[2]  # (3,): old depth of new pixel (u, v) is w_row . (u, v, 1), linear in (u, v)
    corners = np.array([[0., 0., 1.], [cols, 0., 1.], [0., rows, 1.], [cols, rows, 1.]]) @ w_row  # (4,)
    if (corners > 0).all():  # a half-plane condition: positive at the corners = positive everywhere
        return out
    u = np.arange(cols) + 0.5  # (W,) pixel centres
    v = np.arange(rows) + 0.5  # (H,)
    behind = (w_row[0] * u[None, :] + w_row[1] * v[:, None] + w_row[2]) <= 0  # (H, W)
    out[behind] = 0
    return out


def _zoom_range(value: Sequence[float], name: str) -> Tuple[float, float]:
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.shape != (2,) or not np.isfinite(values).all() or not 0 < values[0] <= values[1]:
        raise ValueError(f'{name}: zoom must be (low, high) with 0 < low <= high, both finite, got {value!r}')
    return float(values[0]), float(values[1])


@TRANSFORMS.register_module()
class CameraRigAug:
    """Training augmentation of the camera rig, image and cameras updated exactly (module docstring).

    Per physical camera and sample (with probability ``prob``):

    * zoom ``s ~ U(*zoom)`` about the principal point (focal length times ``s``);
    * principal-point shift ``du ~ U(-shift[0], shift[0])``, ``dv ~ U(-shift[1], shift[1])`` pixels:
      the image content and (cx, cy) move by (du, dv);
    * rotation ``roll, pitch, yaw ~ U(-rot_deg[i], rot_deg[i])`` degrees about the camera's own
      z, x, y axes, ``R = Rz(roll) Rx(pitch) Ry(yaw)`` (``perturb.camera_delta``).

    Pixels move by ``H = A K R K^-1`` (``A`` = shift @ zoom), ``cam2img' = A @ K``, ``lidar2cam' =
    [[R, 0], [0, 1]] @ lidar2cam``; image sizes are kept. With F frames the same draw is used for
    a physical camera in every frame.

    Args:
        zoom: (low, high), 0 < low <= high; (1, 1) = no zoom.
        shift: maximum principal-point shift in pixels, (du, dv) or one number for both, >= 0.
        rot_deg: maximum (roll, pitch, yaw) in degrees, or one number for all three, >= 0.
        prob: probability in [0, 1] of augmenting a sample (all its cameras); otherwise the sample
            passes unchanged.

    Records ``results['camera_aug']`` = ``dict(applied, zoom (N_cam,), shift (N_cam, 2) (du, dv),
    rot_deg (N_cam, 3) (roll, pitch, yaw), homography (N_cam, 3, 3) H)`` per view (identity values
    when not applied). ``results['img_shape']`` is unchanged.
    """

    def __init__(self, *, zoom: Sequence[float] = (1.0, 1.0), shift: Pair = (0.0, 0.0),
                 rot_deg: Triple = (0.0, 0.0, 0.0), prob: float = 1.0):
        name = type(self).__name__
        self.zoom = _zoom_range(zoom, name)
        self.shift = _per_axis(shift, 2, name, 'shift (du, dv)')
        self.rot_deg = _triple(rot_deg, name, 'rot_deg (roll, pitch, yaw)')
        if not (_is_number(prob) and 0 <= prob <= 1):
            raise ValueError(f'{name}: prob must be a number in [0, 1], got {prob!r}')
        self.prob = float(prob)

    def _draw(self, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """zoom (n,), shift (n, 2), angles (n, 3) for n physical cameras, from np.random."""
        zoom = np.random.uniform(*self.zoom, size=n)
        shift = np.random.uniform(-1.0, 1.0, size=(n, 2)) * np.asarray(self.shift)
        angles = np.random.uniform(-1.0, 1.0, size=(n, 3)) * np.asarray(self.rot_deg)
        return zoom, shift, angles

    def __call__(self, results: Dict) -> Dict:
        name = type(self).__name__
        cams = _cameras(results, name)
        imgs = _images(results, name)
        frames, per_frame = _frames(results, cams.num_cams, name)
        n = cams.num_cams
        applied = self.prob >= 1 or np.random.rand() < self.prob
        if not applied:
            results['camera_aug'] = dict(applied=False, zoom=np.ones(n), shift=np.zeros((n, 2)),
                                         rot_deg=np.zeros((n, 3)), homography=np.tile(np.eye(3), (n, 1, 1)))
            return results
        zoom, shift, angles = self._draw(per_frame)  # per physical camera
        # (N_cam / F, ...) -> (N_cam, ...): frame-major views, the same draw in every frame
        zoom, shift, angles = np.tile(zoom, frames), np.tile(shift, (frames, 1)), np.tile(angles, (frames, 1))
        k = cams.cam2img.double().numpy()  # (N_cam, 3, 3)
        delta = np.stack([camera_delta(*a) for a in angles])  # (N_cam, 4, 4) [[R, 0], [0, 1]]
        affine = np.stack([(img_crop(-d[0], -d[1]) @ zoom_affine(s, kk[:2, 2])).numpy()
                           for s, d, kk in zip(zoom, shift, k)])  # (N_cam, 3, 3) A = shift @ zoom about (cx, cy)
        homography = affine @ k @ delta[:, :3, :3] @ np.linalg.inv(k)  # (N_cam, 3, 3) H = A K R K^-1
        unchanged = (zoom == 1) & ~shift.any(axis=1) & ~angles.any(axis=1)  # (N_cam,) identity draws
        homography[unchanged] = np.eye(3)  # exactly (K K^-1 is the identity only up to rounding)
        results['img'] = [img if same else warp_homography(img, h)
                          for img, h, same in zip(imgs, homography, unchanged)]
        new = _with_lidar2cam(cams, delta) if np.any(angles) else cams
        results['cameras'] = new.image_transform(torch.from_numpy(affine), image_size=cams.image_size)
        results['camera_aug'] = dict(applied=True, zoom=zoom, shift=shift, rot_deg=angles, homography=homography)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(zoom={self.zoom}, shift={self.shift}, rot_deg={self.rot_deg}, '
                f'prob={self.prob})')


__all__ = ['CameraRigAug', 'warp_homography']
