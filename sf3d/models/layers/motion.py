"""Dense two-frame motion of the multi-view detector: where every pixel's object was in the previous frame.

The decoder's :class:`~sf3d.models.layers.temporal.VelocityMatching` learns to match only from the
few dozen queries matched to a GT, and at the demo budget it did not learn at all (README,
"Temporal input"). The depth lesson was that dense supervision beats a sparse query loss; this
module is its analogue for motion (PWC-Net / RAFT's cost volume, supervised like FCOS3D's dense
targets):

- **Matching.** One FPN level of both frames is projected to C_m channels (one projection for
  both: a Siamese match), normalised, and correlated over a window of displacements, ``2 r_y + 1``
  rows by ``2 r_x + 1`` columns of cells: cosine similarities times 10, so that the softmax can be
  sharp from the start (a plain dot product began near uniform and sharpened slowly). The window
  is wide and flat because image motion between key frames is mostly horizontal: on the synthetic
  demo set (416 px wide), GT centres move 17 px (median) and 103 px (90th percentile), and 95 % of
  them less than 9 px vertically.
- **Static warp** (``static_warp=True``). The window can be centred, per pixel, on where the pixel
  would be in the previous frame if its scene point stood still (:func:`static_flow` of the
  detector's pixel-depth map), so that it searches object motion instead of the ego's parallax.
- **Flow and scale.** Per pixel, the softmax over the displacements gives an expected
  displacement. A small conv on the match probabilities, the current features and the previous
  features sampled at the expected displacement refines it into the flow (input pixels, current ->
  previous image) and gives the log ratio of the previous to the current depth: motion along the
  viewing ray changes an object's scale, not its position, and the two frames' features at the
  match carry what each frame shows of it (the pixel supervision trains them to encode depth).
- **Targets** (:func:`motion_targets`). Every pixel inside a GT box's projected rectangle (the
  nearest box, as in the pixel supervision) takes that box's centre motion:
  ``flow = project_prev(c - v dt) - project_cur(c)`` and ``log(z_prev / z_cur)``. The previous
  cameras carry the ego motion, so the flow holds ego and object motion together and the target
  needs no per-pixel depth. A sample without a previous frame (``dt = 0``, its views repeated) has
  zero flow and ratio, which is what its two identical frames show.
- **Weights.** Each pixel weighs ``1 / (pixels of its box in that view)``, so that every object
  in every view counts once: near objects cover most pixels, and it is they that move most in the
  image (the ego's own motion makes a parallax of hundreds of pixels on the side views). Pixels
  whose target leaves the correlation window, or whose depth ratio is beyond e either way (an
  object passing the camera), are left out: no match in the window can explain them. Measured per
  pixel on the demo set, 40 % of the covered pixels move more than 128 px, against under 10 % of
  the box centres.
- **Velocity** (:func:`motion_velocity`). A box centre ``c`` projects to ``u`` at depth ``z`` in a
  current view; its centre was at pixel ``u + flow(u)``, depth ``z exp(ratio(u))``, in that view's
  previous camera. Unprojecting gives ``c_prev`` (current LiDAR frame) and ``v = (c - c_prev)_xy / dt``,
  averaged over the views that see ``c``. The detector replaces its regressed velocity with it
  (``MultiViewDetector(motion=...)``, ``read_velocity=True``), where some view sees the box and
  ``dt > 0``. Measured at the demo budget (README, "Temporal input"), this velocity is still worse
  than the regressed one: the module is an option, off in the shipped detector configs.
- **Heading from motion** (``heading_speed``, off by default). Front and back of an untextured or
  symmetric object look alike, so a detector gets its heading right up to 180°; a box moving
  faster than ``heading_speed`` m/s whose heading points against its velocity is turned around.

Axis names: B batch, N cameras of one frame, C channels, C_m matching channels, K displacements,
h x w one FPN level, G GT boxes, Q boxes or queries, P supervised pixels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sf3d.structures import MultiViewCameras

from .temporal import frame_references, matching_loss

__all__ = ['DenseMotion', 'centre_motion', 'correlation', 'displacement_grid', 'motion_targets', 'motion_velocity',
           'sample_motion', 'static_flow']


def displacement_grid(radius: Sequence[int]) -> Tensor:
    """(K, 2) displacements ``(dx, dy)`` in cells of the window ``radius = (r_y, r_x)``, row-major
    (dy outer, dx inner), K = (2 r_y + 1)(2 r_x + 1)."""
    ry, rx = (int(r) for r in radius)
    dy, dx = torch.meshgrid(torch.arange(-ry, ry + 1.0), torch.arange(-rx, rx + 1.0), indexing='ij')
    return torch.stack([dx, dy], -1).reshape(-1, 2)  # (K, 2)


def correlation(query: Tensor, key: Tensor, radius: Sequence[int]) -> Tensor:
    """Local correlation: query, key (M, C_m, h, w) -> (M, K, h, w) with channel k =
    ``<query(y, x), key(y + dy_k, x + dx_k)> / sqrt(C_m)`` over :func:`displacement_grid` (zero
    where the displaced cell leaves the map)."""
    if query.shape != key.shape or query.dim() != 4:
        raise ValueError(f'correlation: expected query and key of one shape (M, C_m, h, w), '
                         f'got {tuple(query.shape)} and {tuple(key.shape)}')
    ry, rx = (int(r) for r in radius)
    h, w = query.shape[-2:]
    padded = F.pad(key, (rx, rx, ry, ry))  # (M, C_m, h + 2 r_y, w + 2 r_x)
    out = [(query * padded[:, :, ry + dy:ry + dy + h, rx + dx:rx + dx + w]).sum(1)
           for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)]  # K x (M, h, w)
    return torch.stack(out, 1) / math.sqrt(query.shape[1])  # (M, K, h, w)


class DenseMotion(nn.Module):
    """Per-pixel match, flow and depth ratio between the current and the previous frame (module docstring).

    ``forward(cur, prev (B, N, C, h, w) one FPN level of each frame, stride, static=None) ->
    dict(logits (B, N, K, h, w) match scores around the window's centre, flow (B, N, 2, h, w) input
    pixels (u, v) current -> previous, log_ratio (B, N, h, w) log(z_prev / z_cur), centre
    (B, N, 2, h, w) the window's centre in cells: ``static`` (the static-world flow, cells) or 0)``;
    :meth:`loss` supervises logits, flow and log_ratio.

    Args:
        embed_dims: C; match_dims: C_m of the shared projection; radius: (r_y, r_x) cells of the
            correlation window; hidden: channels of the refinement conv; level: the FPN level
            (index into the detector's levels) that is matched.
        static_warp: centre the correlation window on each pixel's static-world flow
            (:func:`static_flow` of the detector's pixel depth; module docstring) instead of on
            the pixel itself; needs the detector's pixel supervision.
        read_velocity: at prediction, the boxes' velocity is read from the motion maps (True) or
            stays the head's regression (False: the dense motion is only an auxiliary loss).
        heading_speed: at prediction, turn by 180° the boxes faster than this (m/s) whose heading
            points against their velocity (module docstring); None leaves headings alone.
        match_weight, flow_weight, ratio_weight: loss weights of the match cross-entropy (against
            a Gaussian of width ``sigma`` cells around the target displacement), the flow L1 (in
            cells) and the log-ratio L1; pixels whose target leaves the window are left out of all three.
    """

    def __init__(self, *, embed_dims: int = 256, match_dims: int = 32, radius: Sequence[int] = (1, 16),
                 hidden: int = 64, level: int = 0, static_warp: bool = False, read_velocity: bool = True,
                 heading_speed: Optional[float] = None, match_weight: float = 1.0, flow_weight: float = 0.1,
                 ratio_weight: float = 1.0, sigma: float = 0.5):
        super().__init__()
        if len(radius) != 2 or any(int(r) != r or r < 0 for r in radius):
            raise ValueError(f'DenseMotion: radius must be (r_y, r_x), two integers >= 0, got {radius}')
        if int(level) != level or level < 0 or not sigma > 0:
            raise ValueError(f'DenseMotion: level must be an integer >= 0 and sigma > 0, got {level}, {sigma}')
        if heading_speed is not None and not heading_speed >= 0:
            raise ValueError(f'DenseMotion: heading_speed must be None or >= 0 m/s, got {heading_speed}')
        self.heading_speed = None if heading_speed is None else float(heading_speed)
        self.read_velocity = bool(read_velocity)
        self.static_warp = bool(static_warp)
        self.radius = (int(radius[0]), int(radius[1]))
        self.level = int(level)
        self.weights = dict(match=float(match_weight), flow=float(flow_weight), ratio=float(ratio_weight))
        self.sigma = float(sigma)
        self.register_buffer('displacements', displacement_grid(self.radius), persistent=False)  # (K, 2)
        K = self.displacements.shape[0]
        self.proj = nn.Conv2d(embed_dims, match_dims, 1)
        self.scale = 10.0 * math.sqrt(match_dims)  # correlation() divides by sqrt(C_m): cosine x 10
        self.refine = nn.Sequential(nn.Conv2d(K + 2 * match_dims, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(hidden, 3, 1))
        nn.init.zeros_(self.refine[-1].weight)  # starts at the expected displacement and ratio 1
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, cur: Tensor, prev: Tensor, stride: float, static: Optional[Tensor] = None) -> dict:
        if cur.shape != prev.shape or cur.dim() != 5:
            raise ValueError(f'DenseMotion: expected cur and prev of one shape (B, N, C, h, w), '
                             f'got {tuple(cur.shape)} and {tuple(prev.shape)}')
        B, N = cur.shape[:2]
        q, k = self.proj(cur.flatten(0, 1)), self.proj(prev.flatten(0, 1))  # (B * N, C_m, h, w) each
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        centre = torch.zeros_like(q[:, :2], dtype=torch.float32) if static is None else static.flatten(0, 1).float()
        logits = correlation(q, k if static is None else self._warp(k, centre), self.radius) * self.scale
        prob = logits.float().softmax(1)  # (B * N, K, h, w) around the window's centre
        expected = centre + torch.einsum('mkhw,kc->mchw', prob, self.displacements)  # (B * N, 2, h, w) cells
        matched = self._warp(k, expected)  # (B * N, C_m, h, w) the previous frame at the expected match
        r = self.refine(torch.cat([prob.to(q.dtype), q, matched], 1)).float()  # (B * N, 3, h, w)
        flow = (expected + r[:, :2]) * float(stride)  # (B * N, 2, h, w) pixels
        return dict(logits=logits.unflatten(0, (B, N)), flow=flow.unflatten(0, (B, N)),
                    log_ratio=r[:, 2].unflatten(0, (B, N)), centre=centre.unflatten(0, (B, N)))

    @staticmethod
    def _warp(feat: Tensor, disp: Tensor) -> Tensor:
        """feat (M, C, h, w) bilinearly sampled at every cell + disp (M, 2, h, w) cells (dx, dy)."""
        h, w = feat.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=feat.device, dtype=torch.float32),
                                torch.arange(w, device=feat.device, dtype=torch.float32), indexing='ij')
        x = (xs + disp[:, 0] + 0.5) * (2.0 / w) - 1.0  # (M, h, w) grid_sample coordinates
        y = (ys + disp[:, 1] + 0.5) * (2.0 / h) - 1.0
        return F.grid_sample(feat, torch.stack([x, y], -1).to(feat.dtype), align_corners=False)

    def loss(self, out: dict, flow: Tensor, log_ratio: Tensor, weight: Tensor, stride: float) -> dict:
        """Losses against :func:`motion_targets` stacked over the batch: flow (B, N, h, w, 2) pixels,
        log_ratio (B, N, h, w), weight (B, N, h, w); pixels whose target leaves the window or whose
        |log ratio| exceeds 1 are left out (module docstring). Each loss is a weighted mean."""
        ry, rx = self.radius
        cells = flow / float(stride)  # (B, N, h, w, 2)
        rel = cells - out['centre'].float().movedim(2, -1)  # (B, N, h, w, 2) from the window's centre
        keep = ((weight > 0) & (rel[..., 0].abs() <= rx) & (rel[..., 1].abs() <= ry)
                & (log_ratio.abs() <= 1.0))  # (B, N, h, w)
        w, target = weight[keep], cells[keep]  # (P,), (P, 2) cells
        num = w.sum().clamp(min=1.0)
        log_w = out['logits'].float().movedim(2, -1)[keep].log_softmax(-1)  # (P, K)
        match = matching_loss(log_w, self.displacements.expand(w.shape[0], -1, -1), rel[keep], self.sigma)  # (P,)
        pred = out['flow'].float().movedim(2, -1)[keep] / float(stride)  # (P, 2) cells
        ratio = (out['log_ratio'].float()[keep] - log_ratio[keep]).abs()  # (P,)
        return {'motion.loss_match': self.weights['match'] * (w * match).sum() / num,
                'motion.loss_flow': self.weights['flow'] * (w * (pred - target).abs().sum(-1)).sum() / num,
                'motion.loss_ratio': self.weights['ratio'] * (w * ratio).sum() / num}


@torch.no_grad()
def static_flow(depth: Tensor, cur: MultiViewCameras, prev: MultiViewCameras, stride: float) -> Tensor:
    """Where each pixel of a map would be in the previous frame if its scene point stood still.

    Args:
        depth: (B, N, h, w) camera z (metres) of each map pixel, whose pixel (i, j) is centred at
            input pixel ``((j + 0.5) * stride, (i + 0.5) * stride)``.
        cur, prev: (B,) batches of N current views and the same N views of the previous frame.
    Returns:
        (B, N, 2, h, w) displacement in map cells (dx, dy); 0 where the point is behind the previous camera.
    """
    h, w = depth.shape[-2:]
    uv = cur.pixel_grid((h, w), (h * stride, w * stride)).float()  # (B, N, P, 2) input pixels of the map's cells
    points = cur.unproject(uv, depth.float().flatten(2))  # (B, N, P, 3) current LiDAR frame
    l2i = prev.lidar2img.to(points)  # (B, N, 4, 4)
    cam = torch.einsum('bnij,bnpj->bnpi', l2i[..., :3, :3], points) + l2i[..., None, :3, 3]  # (B, N, P, 3)
    ahead = cam[..., 2] > 0.1  # (B, N, P)
    moved = torch.where(ahead[..., None], cam[..., :2] / cam[..., 2:].clamp(min=0.1) - uv, torch.zeros_like(uv))
    return (moved / float(stride)).transpose(-1, -2).unflatten(-1, (h, w))  # (B, N, 2, h, w)


def centre_motion(centres: Tensor, velocity: Tensor, cur: MultiViewCameras, prev: MultiViewCameras,
                  dt: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where boxes are seen now and were seen ``dt`` seconds ago, for ONE sample: centres (G, 3) and
    velocity (G, 2) m/s in the current LiDAR frame, the N current and N previous views -> uv, depth
    in the current views (N, G, 2), (N, G) and, of ``centre - velocity * dt``
    (:func:`~sf3d.models.layers.temporal.frame_references`), in the previous views (N, G, 2), (N, G)."""
    c = centres.float()
    before = frame_references(c[None], velocity[None].float(), c.new_tensor([[float(dt)]]))[0, 0]  # (G, 3)
    return (*cur.project(c), *prev.project(before))


@torch.no_grad()
def motion_targets(centres: Tensor, velocity: Tensor, cover: Tensor, cur: MultiViewCameras,
                   prev: MultiViewCameras, dt: float) -> tuple[Tensor, Tensor, Tensor]:
    """Targets of the dense motion for ONE sample (module docstring).

    Args:
        centres: (G, 3) GT gravity centres, velocity: (G, 2) m/s, both in the current LiDAR frame.
        cover: (N, h, w) int64 the GT box each pixel takes its target from, -1 for none.
        cur, prev: the sample's N current views and the same N views of the previous frame
            (expressed from the current LiDAR frame); dt: seconds back to the previous frame.
    Returns:
        flow (N, h, w, 2) pixels, log_ratio (N, h, w), weight (N, h, w): ``1 / (pixels of the
        covering box in that view)`` where the box's centre is in front of both cameras, else 0.
    """
    N, h, w = cover.shape
    G = centres.shape[0]
    if G == 0:
        zeros = cover.new_zeros((N, h, w), dtype=torch.float32)
        return zeros[..., None].expand(-1, -1, -1, 2).clone(), zeros, zeros.clone()
    uv1, z1, uv0, z0 = centre_motion(centres, velocity, cur, prev, dt)  # (N, G, 2), (N, G) each frame
    ok = (z1 > 0.1) & (z0 > 0.1)  # (N, G)
    per_box = torch.cat([uv0 - uv1, torch.log(z0.clamp(min=0.1) / z1.clamp(min=0.1))[..., None],
                         ok[..., None].float()], -1)  # (N, G, 4)
    idx = cover.clamp(min=0).flatten(1)  # (N, h * w)
    maps = per_box.gather(1, idx[..., None].expand(-1, -1, 4)).view(N, h, w, 4)
    valid = (cover >= 0) & (maps[..., 3] > 0)  # (N, h, w)
    pixels = torch.zeros(N, G + 1, device=cover.device).scatter_add_(
        1, torch.where(cover >= 0, cover, G).flatten(1), torch.ones(N, h * w, device=cover.device))  # (N, G + 1)
    share = 1.0 / pixels.gather(1, idx).view(N, h, w).clamp(min=1.0)  # (N, h, w) 1 / pixels of the box in the view
    weight = torch.where(valid, share, torch.zeros_like(share))
    return maps[..., :2], maps[..., 2], weight


def sample_motion(flow: Tensor, log_ratio: Tensor, uv: Tensor, image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The motion maps read at pixels: flow (B, N, 2, h, w), log_ratio (B, N, h, w) covering the padded
    input of size (H, W); uv (B, N, Q, 2) input pixels -> flow (B, N, Q, 2) pixels, log_ratio (B, N, Q)
    (bilinear, zero outside the image)."""
    H, W = (float(s) for s in image_size)
    grid = (uv.float() * uv.new_tensor([2.0 / W, 2.0 / H]) - 1.0).flatten(0, 1)[:, :, None]  # (B * N, Q, 1, 2)
    maps = torch.cat([flow.float(), log_ratio.float()[:, :, None]], 2).flatten(0, 1)  # (B * N, 3, h, w)
    s = F.grid_sample(maps, grid, align_corners=False).squeeze(-1).unflatten(0, uv.shape[:2])  # (B, N, 3, Q)
    return s[:, :, :2].transpose(-1, -2), s[:, :, 2]


def motion_velocity(flow: Tensor, log_ratio: Tensor, centres: Tensor, cur: MultiViewCameras,
                    prev: MultiViewCameras, dt: Tensor, image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Velocity of boxes from the dense motion (module docstring).

    Args:
        flow: (B, N, 2, h, w) pixels; log_ratio: (B, N, h, w); both cover the padded input image.
        centres: (B, Q, 3) box gravity centres in the current LiDAR frame.
        cur, prev: (B,) batches of N current and N previous views; dt: (B,) seconds.
        image_size: (H, W) of the padded input.
    Returns:
        velocity (B, Q, 2) m/s (0 where unseen), seen (B, Q) bool: some current view sees the
        centre (in front, inside the image) and dt > 0.
    """
    pts = centres.float()
    uv1, z1 = cur.project(pts)  # (B, N, Q, 2), (B, N, Q)
    seen = cur.in_image(uv1, z1, tuple(image_size)) & (z1 > 0.1) & (dt > 0)[:, None, None]  # (B, N, Q)
    f, r = sample_motion(flow, log_ratio, uv1, image_size)  # (B, N, Q, 2), (B, N, Q)
    before = prev.unproject(uv1 + f, z1 * r.exp())  # (B, N, Q, 3) current LiDAR frame
    v = (pts[:, None] - before)[..., :2] / dt.float().clamp(min=1e-3)[:, None, None, None]  # (B, N, Q, 2)
    weight = seen.float()[..., None]  # (B, N, Q, 1)
    return (v * weight).sum(1) / weight.sum(1).clamp(min=1.0), seen.any(1)
