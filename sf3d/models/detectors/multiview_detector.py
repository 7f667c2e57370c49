"""Multi-view camera 3D detector: backbone + FPN + DETR3D-style head, with spatial-token queries.

DETR3D (Wang et al., CoRL 2021) decodes learned queries (``nn.Embedding(900, 2 * 256)``) whose
3D reference points are a learned linear map of the query. Here, with a SpatialFormer backbone
(the 3D extension in DESIGN.md), the decoder's queries come from the backbone's FINAL spatial
tokens of all views instead:

* before the first block, each view's INITIAL spatial tokens are modulated by a camera
  encoding of their rays (:class:`~sf3d.models.layers.camera_encoding.CameraConditioning`,
  zero-initialised, so a pretrained backbone starts unchanged);
* content query: ``Linear(C_last -> embed_dims)`` of the final token;
* positional query: an MLP of the Fourier-encoded Plücker coordinates ``(d, o x d)`` of the
  token's ray (LiDAR frame), the same ray geometry as the 'ray' conditioning;
* initial reference point: the token's ray at a depth predicted from the token,
  ``ref = o + depth * d`` with ``depth = lo + (hi - lo) * sigmoid(MLP(token))`` (metres along the
  unit ray direction) -- geometry, not a learned constant. ``[lo, hi]`` is ``depth_range`` cut to
  the part of the ray inside the head's point-cloud range (:func:`ray_depth_bounds`): a token that
  looks above or below the horizon meets the range's top or bottom face before ``d_max``, and a
  reference beyond it would be clamped by the head, off its ray, where inverse_sigmoid saturates.
* depth hypotheses (``depth_bins=k``, Far3D / MDHA-style; k = 1 is the single depth above): each
  token emits k queries, one per depth bin of its ray (:func:`depth_bin_edges`: ``[lo, hi]`` split
  into k bins whose widths grow linearly with depth, as LID depth bins), at a depth predicted
  within its bin (``edge_i + width_i * sigmoid(MLP(token)_i)``); content ``query_proj(token) +
  bin_embed[i]``. A single regressed depth per token is wrong by metres for many iterations and a
  token then has no query near its object; k hypotheses cover the whole ray from the start, and
  the image decides (through the head's classification) which of them holds an object.
* in-cell offsets (``token_offsets=True``; the projected-centre offset of CenterNet / FCOS3D): a
  token's cell is tens of pixels wide, so the ray through its centre misses an object centre that
  projects elsewhere in the cell by ``depth * offset / focal`` metres (over 1 m at 20 m in the
  demo). Each hypothesis predicts where in its cell the centre projects, ``0.5 * tanh(MLP(token))``
  cell sizes per axis (zero-initialised: the cell centre), and its reference lies on the ray
  through that pixel instead (depth bins and bounds follow that ray). The token supervision
  regresses it (L1, cell sizes) to the labelled hypothesis's GT centre.
* query selection (``num_select=S``, DINO's query selection): of the T * Z token hypotheses, the S
  with the highest token-class score (``token_loss``'s dense classifier, detached) become the
  decoder's queries, so the decoder's cost does not grow with Z.
* global queries (``global_queries=G``, Far3D's global + adaptive queries): G learned queries
  (DETR3D's, below) are decoded after the token queries, so objects that no selected token
  hypothesis covers still have a query near them.

Token supervision (``token_loss``, spatial-token mode; a deviation from DETR3D that this codebase
adds for convergence): every GT box whose gravity centre projects into a view marks the token
cell it falls in (the nearest box wins a cell). That token is trained to classify the box
(sigmoid focal loss over all tokens, like the head's) and its reference depth to reach the
centre's distance along the token's ray (L1, metres); with k depth bins, only the hypothesis whose
bin holds that distance is labelled (a dense objectness over cells x depth bins, the frustum
classification of depth-distribution methods) and regresses the depth. The dense signal teaches the backbone
where objects are and puts the initial reference points near them early. With ``assign=True``
each GT is also matched to the query of the token that owns it (of the cells it wins, the one
nearest its view's centre column; with depth bins, that token's hypothesis whose bin holds the GT's
distance) before the head's Hungarian step, which matches the rest by
cost: a query's target then stays put from the first iteration instead of jumping between
objects (README: convergence on synthetic nuScenes, measured with and without).

Pixel supervision (``pixel_loss``, any query mode; the 2D auxiliary loss of many camera 3D
detectors): every GT box projected into a view covers the 2D bounding box of its corners (boxes
with a corner behind the camera are skipped); each pixel of the first FPN level takes the class
and centre depth of the nearest box covering it. A 1x1 conv on that level predicts them (focal
loss over all pixels, L1 depth on covered pixels), so the features the decoder samples learn
class and distance densely from the first iteration.

Denoising (``denoising=dict(...)``, any query mode; DN-DETR / DINO, with RayDN's negatives along
each GT's ray): in training, noised copies of the GT run through the same decoder before the
matching queries, under an attention mask that hides them from the matching queries
(:class:`~sf3d.models.layers.denoising.DenoisingQueries`); each reconstructs its GT box (or, for a
ray negative, background) with no matching, so the decoder learns to refine a reference near an
object from the first iterations. Prediction and the matching losses see only the matching queries.

Dense pretraining (``pretrained=PATH``; DETR3D starts from FCOS3D, a monocular detector trained on
the same camera images): :class:`~sf3d.models.detectors.dense_pretrainer.DensePretrainer` trains
only the backbone, FPN, camera conditioning and the dense token and pixel heads with the token and
pixel supervision, no decoder; :meth:`MultiViewDetector.init_weights` then loads those parts
(``DENSE_PARTS``) and the queries and decoder start fresh, in either query mode.

Two-frame input (``num_frames=2``; Sparse4D / PETRv2-style temporal sampling, for velocity): the
input holds the previous key frame's views after the current ones, all with cameras from the
current LiDAR frame (``NuScenesMultiViewDataset(num_frames=2)`` composes the ego motion into
them), and ``data_samples['time_delta']`` the seconds between the two. Both frames go through the
backbone and FPN (the previous one without gradient by default); queries, token and pixel
supervision come from the current frame. Each decoder layer matches the query's object in the
previous frame over a grid of velocity hypotheses around the velocity the layer before
regressed, at ``centre - velocity * dt`` with dt in seconds, and samples the previous frame where
the matched velocity puts it (:mod:`sf3d.models.layers.temporal`). With ``motion``, a dense
correlation between the two frames is supervised per pixel with the GT boxes' motion and gives the
predicted boxes' velocity (:mod:`sf3d.models.layers.motion`).

``query_mode='learned'`` is the DETR3D baseline (any backbone, e.g. ResNet + FPN): an
``nn.Embedding(num_queries, 2 * embed_dims)`` split into (query_pos, query) and reference points
``sigmoid(Linear(query_pos))`` over the head's point-cloud range.

Token rays: SpatialFormer's spatial token ``i * gw + j`` sits at the normalised position of its
grid cell centre over the image the backbone sees, i.e. the PADDED input (H, W); its ray is
``MultiViewCameras.pixel_grid_rays((gh, gw), (H, W))``.

Axis names: B batch, N cameras (N_cam), M = gh * gw spatial tokens per view, T = N * M tokens,
Z depth bins per token, Q queries (T * Z in spatial-token mode), C channels, L FPN levels,
D decoder layers, K classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from sf3d.models.heads.box_coder import denormalize_points
from sf3d.models.heads.detr3d_head import DETR3DHead
from sf3d.models.layers.camera_encoding import CameraConditioning, fourier_features
from sf3d.models.layers.cell_features import CellFeatures
from sf3d.models.layers.denoising import DenoisingQueries
from sf3d.models.layers.motion import DenseMotion, motion_targets, motion_velocity, static_flow
from sf3d.models.layers.temporal import frame_time_deltas
from sf3d.models.necks.fpn import FPN
from sf3d.registry import MODELS
from sf3d.structures import LiDARBoxes, MultiViewCameras
from sf3d.utils.checkpoint import load_state_dict_strict, read_checkpoint, unwrap_state_dict

__all__ = ['DENSE_PARTS', 'MultiViewDetector', 'depth_bin_edges', 'load_dense_parts', 'ray_depth_bounds']

QUERY_MODES = ('spatial_tokens', 'learned')


# the parts a dense-pretraining checkpoint (DensePretrainer) gives a detector; the rest starts fresh
DENSE_PARTS = ('backbone', 'neck', 'conditioning', 'depth_mlp', 'offset_mlp', 'token_cls', 'pixel_head')
REF_MARGIN = 1e-3  # fraction of each pc_range extent kept between a token's reference and the range's faces


@torch.no_grad()
def ray_depth_bounds(origins: Tensor, dirs: Tensor, pc_range: Sequence[float], depth_range: Sequence[float],
                     margin: float = REF_MARGIN) -> tuple[Tensor, Tensor]:
    """Depth interval ``[lo, hi]`` of each ray's reference point: ``depth_range`` cut to the ray's
    segment inside ``pc_range`` shrunk by ``margin`` of each extent (slab method).

    Args:
        origins, dirs: (..., 3) rays in the LiDAR frame (unit directions).
        pc_range: ``[x0, y0, z0, x1, y1, z1]``; depth_range: (d_min, d_max) metres.
    Returns:
        lo, hi (...) metres along the ray, ``lo < hi``. Every ``o + t d`` with ``lo <= t <= hi``
        normalises into ``[margin, 1 - margin]^3`` of pc_range, so the head uses it unclamped and
        inverse_sigmoid keeps its gradient. A ray whose segment inside the range misses
        ``depth_range`` (a camera outside the range, or facing away from it) keeps ``depth_range``;
        only such references are clamped by the head.
    """
    r = origins.new_tensor(pc_range)
    extent = r[3:] - r[:3]
    box_lo, box_hi = r[:3] + margin * extent, r[3:] - margin * extent
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)  # parallel to a slab: all or nothing
    t1, t2 = (box_lo - origins) / safe, (box_hi - origins) / safe  # (..., 3) each
    t_in, t_out = torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)  # (...) each
    d_min, d_max = (float(v) for v in depth_range)
    lo, hi = t_in.clamp(min=d_min), t_out.clamp(max=d_max)
    inside = hi > lo
    return torch.where(inside, lo, d_min), torch.where(inside, hi, d_max)


def depth_bin_edges(lo: Tensor, hi: Tensor, num_bins: int) -> Tensor:
    """Edges (..., Z + 1) of Z depth bins on ``[lo, hi]`` (...) whose widths grow linearly with
    depth (LID: bin i spans the fractions ``i (i + 1) / (Z (Z + 1))`` .. ``(i + 1) (i + 2) / (Z (Z + 1))``
    of the interval); Z = 1 is the whole interval."""
    i = torch.arange(num_bins + 1, device=lo.device, dtype=lo.dtype)
    frac = i * (i + 1) / (num_bins * (num_bins + 1))  # (Z + 1,) from 0 to 1
    return lo[..., None] + (hi - lo)[..., None] * frac  # (..., Z + 1)


def _plucker(origins: Tensor, dirs: Tensor) -> Tensor:
    """(..., 3), (..., 3) unit directions -> (..., 6) Plücker coordinates (d, o x d)."""
    return torch.cat([dirs, torch.linalg.cross(origins, dirs, dim=-1)], dim=-1)


@torch.no_grad()
def box_cover(boxes: Tensor, cameras: MultiViewCameras, feat_size: Sequence[int],
              stride: float) -> tuple[Tensor, Tensor]:
    """Which GT box each pixel of a feature map belongs to, for ONE sample: the nearest (by centre
    depth) of the boxes whose projected rectangle holds the pixel centre; boxes with a corner behind
    the camera are skipped.

    Args:
        boxes: (G, 9) GT boxes ``[x, y, z_bottom, l, w, h, yaw, vx, vy]``.
        cameras: the sample's N_cam views; feat_size: (h, w) of the feature map whose pixel (i, j)
            is centred at input pixel ``((j + 0.5) * stride, (i + 0.5) * stride)``.
    Returns:
        cover (N_cam, h, w) int64 box index, -1 where no box covers the pixel; centre_depth
        (N_cam, G) each box centre's camera z (metres).
    """
    h, w = feat_size
    N, G = cameras.num_cams, boxes.shape[0]
    if G == 0:
        return (torch.full((N, h, w), -1, dtype=torch.long, device=boxes.device),
                boxes.new_zeros((N, 0), dtype=torch.float32))
    lb = LiDARBoxes(boxes.float(), validate=False)
    pts = torch.cat([lb.corners, lb.gravity_center[:, None]], dim=1).reshape(G * 9, 3)  # (G * 9, 3)
    uv, depth = cameras.project(pts)  # (N, G * 9, 2), (N, G * 9)
    uv, depth = uv.view(N, G, 9, 2), depth.view(N, G, 9)
    corners_uv, in_front = uv[:, :, :8], (depth[:, :, :8] > 0.1).all(-1)  # (N, G, 8, 2), (N, G)
    lo, hi = corners_uv.amin(2), corners_uv.amax(2)  # (N, G, 2) each, (u, v)
    xs = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) * stride  # (w,)
    ys = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) * stride  # (h,)
    in_u = (xs >= lo[..., 0, None]) & (xs <= hi[..., 0, None])  # (N, G, w)
    in_v = (ys >= lo[..., 1, None]) & (ys <= hi[..., 1, None])  # (N, G, h)
    cover = in_v[..., :, None] & in_u[..., None, :] & in_front[..., None, None]  # (N, G, h, w)
    centre_depth = depth[:, :, 8]  # (N, G)
    dmap = torch.where(cover, centre_depth[..., None, None], torch.full_like(centre_depth[..., None, None], float('inf')))
    nearest, idx = dmap.min(dim=1)  # (N, h, w) each
    return torch.where(torch.isfinite(nearest), idx, torch.full_like(idx, -1)), centre_depth


@torch.no_grad()
def pixel_targets(boxes: Tensor, labels: Tensor, cameras: MultiViewCameras, feat_size: Sequence[int],
                  stride: float) -> tuple[Tensor, Tensor]:
    """Targets of the pixel supervision for ONE sample (module docstring).

    Args:
        boxes: (G, 9) GT boxes ``[x, y, z_bottom, l, w, h, yaw, vx, vy]``; labels: (G,).
        cameras, feat_size, stride: as in :func:`box_cover`.
    Returns:
        labels (N_cam, h, w) int64, -1 where no box covers the pixel; depths (N_cam, h, w) the
        covering box's centre depth (camera z, metres; 0 where uncovered).
    """
    cover, centre_depth = box_cover(boxes, cameras, feat_size, stride)
    covered = cover >= 0
    out_labels = torch.full_like(cover, -1)
    out_depths = torch.zeros(cover.shape, dtype=torch.float32, device=boxes.device)
    out_labels[covered] = labels[cover[covered]]
    cam = torch.arange(cover.shape[0], device=cover.device)[:, None, None].expand_as(cover)  # (N_cam, h, w)
    out_depths[covered] = centre_depth[cam[covered], cover[covered]]
    return out_labels, out_depths


@torch.no_grad()
def token_targets(centres: Tensor, labels: Tensor, cameras: MultiViewCameras, image_size: Sequence[int],
                  grid: Sequence[int], origins: Tensor, dirs: Tensor) -> tuple[Tensor, ...]:
    """Targets of the token supervision for ONE sample (module docstring).

    Args:
        centres: (G, 3) GT gravity centres (LiDAR frame); labels: (G,) classes.
        cameras: the sample's N_cam views; image_size: (H, W) of the padded input the tokens tile.
        grid: (gh, gw) spatial tokens per view; token ``n * M + i * gw + j`` covers rows
            [i H / gh, (i + 1) H / gh) and columns [j W / gw, (j + 1) W / gw) of view n.
        origins, dirs: (N_cam * M, 3) each token's ray (unit directions).
    Returns:
        labels (N_cam * M,) int64, -1 where no centre falls; depths (N_cam * M,) the winning
        centre's distance along the token's ray ``(c - o) . d`` (0 where label is -1); owners (G,)
        int64: the one token each GT is assigned to (of the cells it wins, the one nearest its
        view's centre column), -1 for a GT that wins no cell; offsets (N_cam * M, 2) where the
        winning centre projects in its cell, ``(u, v)`` relative to the cell centre in cell sizes
        (in [-0.5, 0.5), 0 where label is -1).
    """
    H, W = (float(v) for v in image_size)
    gh, gw = grid
    M = gh * gw
    num_tokens = cameras.num_cams * M
    out_labels = torch.full((num_tokens,), -1, dtype=torch.long, device=centres.device)
    out_depths = torch.zeros(num_tokens, dtype=torch.float32, device=centres.device)
    owners = torch.full((centres.shape[0],), -1, dtype=torch.long, device=centres.device)
    out_offsets = torch.zeros(num_tokens, 2, dtype=torch.float32, device=centres.device)
    if centres.shape[0] == 0:
        return out_labels, out_depths, owners, out_offsets
    uv, depth = cameras.project(centres.float())  # (N, G, 2), (N, G)
    inside = (depth > 0.1) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    cam, g = inside.nonzero(as_tuple=True)  # (P,) each
    if cam.numel() == 0:
        return out_labels, out_depths, owners, out_offsets
    cell_uv = uv[cam, g] * uv.new_tensor([gw / W, gh / H])  # (P, 2) in cells: (column, row)
    row = cell_uv[:, 1].long().clamp(0, gh - 1)
    col = cell_uv[:, 0].long().clamp(0, gw - 1)
    offset = cell_uv - torch.stack([col, row], -1) - 0.5  # (P, 2) from the cell centre
    token = cam * M + row * gw + col  # (P,)
    d = depth[cam, g]
    nearest = torch.full((num_tokens,), float('inf'), device=d.device).scatter_reduce(0, token, d, 'amin')
    win = d == nearest[token]  # the nearest centre of each marked cell
    token, g, off_centre, offset = token[win], g[win], (uv[cam, g, 0] / W - 0.5).abs()[win], offset[win]
    first = torch.full((num_tokens,), centres.shape[0], device=d.device).scatter_reduce(0, token, g, 'amin')
    keep = g == first[token]  # equal depths: the lowest GT index keeps the cell
    token, g, off_centre, offset = token[keep], g[keep], off_centre[keep], offset[keep]
    out_labels[token] = labels[g]
    out_depths[token] = ((centres[g].float() - origins[token]) * dirs[token]).sum(-1)
    out_offsets[token] = offset.float()
    best = torch.full((centres.shape[0],), float('inf'), device=d.device).scatter_reduce(0, g, off_centre, 'amin')
    own = off_centre == best[g]  # a GT seen by two views is owned by one token
    owners[g[own]] = token[own]
    return out_labels, out_depths, owners, out_offsets


@MODELS.register_module()
class MultiViewDetector(BaseModel):
    """Camera-only multi-view 3D detector (see the module docstring).

    Args:
        backbone: config of a registered backbone (``type='SpatialFormer'`` or ``'ResNet'``), built
            with ``MODELS.build``; it must declare ``out_channels`` / ``out_strides`` and return
            ``dict(features=[...], spatial_tokens=...)``.
        neck: keyword arguments of :meth:`FPN.from_backbone` (``out_channels`` defaults to
            ``embed_dims`` and must equal it; ``num_outs``, ``start_level``, ``add_extra_convs`` ...).
        head: keyword arguments of :class:`DETR3DHead` (``embed_dims`` and ``num_levels`` are filled
            in from ``embed_dims`` and the FPN).
        query_mode: ``'spatial_tokens'`` (needs a SpatialFormer) or ``'learned'`` (DETR3D).
        num_queries: number of learned queries (``'learned'`` only).
        global_queries: G learned queries decoded after the token queries (module docstring;
            ``'spatial_tokens'`` only); 0 (default) decodes the token queries alone.
        conditioning: :class:`CameraConditioning` variant for the spatial tokens (``'none'``,
            ``'intrinsics'``, ``'extrinsics'``, ``'ray'``, ``'frustum'``); must be ``'none'`` for a
            backbone without spatial tokens.
        conditioning_at: ``'input'`` (default, DESIGN.md) modulates the INITIAL tokens before the
            first BCA block; ``'output'`` (an ablation) leaves the backbone unconditioned and
            modulates its FINAL tokens (before the query, depth and token-class maps).
        embed_dims: decoder width C.
        depth_range: (d_min, d_max) metres of the predicted depth along each token's ray, further cut
            to the ray's segment inside the head's ``pc_range`` (:func:`ray_depth_bounds`).
        depth_bins: Z depth hypotheses (queries) per spatial token (module docstring); 1 is a single
            depth per token.
        ray_num_freqs: Fourier octaves of the Plücker coordinates in the positional query.
        token_loss: ``dict(cls_weight=..., depth_weight=..., assign=False)`` turns on the token
            supervision (module docstring; spatial-token mode only), None (default) leaves it off.
            ``assign=True`` also matches each GT to the query of the token that owns it before the
            head's Hungarian step (the rest is matched by cost as usual). ``offset_weight`` (default
            1.0) weighs the in-cell offset loss of ``token_offsets``.
        token_offsets: each token hypothesis predicts where in its cell the object centre projects,
            and its reference lies on the ray through that pixel (module docstring; needs
            ``token_loss``, which supervises it); False (default) keeps the cell-centre ray.
        pixel_loss: ``dict(cls_weight=..., depth_weight=...)`` turns on the pixel supervision of
            the first FPN level (module docstring; any query mode), None (default) leaves it off.
        num_select: keep the S token hypotheses of highest token-class score as queries (module
            docstring; needs ``token_loss``); None (default) keeps all T * Z.
        denoising: keyword arguments of :class:`~sf3d.models.layers.denoising.DenoisingQueries`
            (``num_groups``, ``centre_noise``, ``label_noise``, ``ray_negatives``, ...; the sizes and
            pc_range come from the head) turn on denoising queries in training; None (default) leaves
            them off.
        num_frames: 2 reads the previous key frame too (module docstring; the input then holds
            2 x N_cam views, ``data_samples`` a ``time_delta``); 1 (default) is single-frame.
        prev_frame_grad: with two frames, backpropagate through the previous frame's backbone and
            FPN as well; False (default) runs them without gradient (the current frame's pass
            trains the same weights, at about a third of the cost).
        motion: keyword arguments of :class:`~sf3d.models.layers.motion.DenseMotion` (``radius``,
            ``level``, loss weights, ...) turn on the dense two-frame motion (needs
            ``num_frames=2``): supervised per pixel in training, and the velocity of every
            predicted box seen by a camera is read from it; None (default) leaves it off.
        cell_features: add to each final spatial token the mean of the first FPN level over its cell
            (:class:`~sf3d.models.layers.cell_features.CellFeatures`, zero-initialised) before the token
            heads and the query projection read it; False (default) leaves the tokens as the backbone
            gives them.
        pretrained: path of a :class:`DensePretrainer` (or MultiViewDetector) checkpoint whose
            ``DENSE_PARTS`` this detector has, loaded by :meth:`init_weights` (module docstring);
            None (default) keeps the backbone's own ``init_cfg``.
        data_preprocessor, init_cfg: as in mmengine's ``BaseModel``.
    """

    def __init__(self, *, backbone: dict, neck: dict, head: dict, query_mode: str = 'spatial_tokens',
                 num_queries: int = 900, conditioning: str = 'ray', conditioning_at: str = 'input',
                 embed_dims: int = 256,
                 depth_range: Sequence[float] = (1.0, 60.0), depth_bins: int = 1, ray_num_freqs: int = 4,
                 token_loss: Optional[dict] = None, pixel_loss: Optional[dict] = None,
                 num_select: Optional[int] = None, denoising: Optional[dict] = None,
                 global_queries: int = 0, token_offsets: bool = False, num_frames: int = 1,
                 prev_frame_grad: bool = False, motion: Optional[dict] = None, cell_features: bool = False,
                 pretrained: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.pretrained = pretrained
        if query_mode not in QUERY_MODES:
            raise ValueError(f'MultiViewDetector: query_mode must be one of {QUERY_MODES}, got {query_mode!r}')
        if len(depth_range) != 2 or not 0 < depth_range[0] < depth_range[1]:
            raise ValueError(f'MultiViewDetector: depth_range must be (d_min, d_max) with 0 < d_min < d_max, '
                             f'got {depth_range}')
        self.query_mode = query_mode
        self.embed_dims = embed_dims
        self.depth_range = (float(depth_range[0]), float(depth_range[1]))
        if int(depth_bins) != depth_bins or depth_bins < 1 or (depth_bins > 1 and query_mode != 'spatial_tokens'):
            raise ValueError(f"MultiViewDetector: depth_bins must be an integer >= 1 (> 1 only with "
                             f"query_mode='spatial_tokens'), got {depth_bins} with query_mode={query_mode!r}")
        self.depth_bins = int(depth_bins)
        self.ray_num_freqs = int(ray_num_freqs)

        self.backbone = MODELS.build(backbone)
        self.has_spatial_tokens = hasattr(self.backbone, 'initial_spatial_tokens')
        if query_mode == 'spatial_tokens' and not self.has_spatial_tokens:
            raise ValueError(f"MultiViewDetector: query_mode='spatial_tokens' needs a backbone with spatial tokens "
                             f"(SpatialFormer), got {type(self.backbone).__name__}; use query_mode='learned'")
        if conditioning_at not in ('input', 'output') or (conditioning_at == 'output' and conditioning == 'none'):
            raise ValueError(f"MultiViewDetector: conditioning_at must be 'input' or 'output' ('output' needs a "
                             f"conditioning other than 'none'), got {conditioning_at!r} with {conditioning!r}")
        self.conditioning_at = conditioning_at
        if conditioning != 'none' and not self.has_spatial_tokens:
            raise ValueError(f"MultiViewDetector: conditioning={conditioning!r} needs a backbone with spatial tokens "
                             f"(SpatialFormer), got {type(self.backbone).__name__}; use conditioning='none'")

        neck = dict(neck)
        neck.setdefault('out_channels', embed_dims)
        if neck['out_channels'] != embed_dims:
            raise ValueError(f'MultiViewDetector: neck out_channels ({neck["out_channels"]}) must equal '
                             f'embed_dims ({embed_dims}); the head samples FPN features as query channels')
        self.neck, self.feat_strides = FPN.from_backbone(self.backbone, **neck)

        head = dict(head)
        if num_frames not in (1, 2):
            raise ValueError(f'MultiViewDetector: num_frames must be 1 or 2 (the previous key frame), got {num_frames}')
        self.num_frames, self.prev_frame_grad = int(num_frames), bool(prev_frame_grad)
        for key, value in (('embed_dims', embed_dims), ('num_levels', self.neck.num_outs),
                           ('num_frames', self.num_frames)):
            if head.setdefault(key, value) != value:
                raise ValueError(f'MultiViewDetector: head {key}={head[key]} differs from the detector\'s {value}')
        self.head = DETR3DHead(**head)

        if token_loss is not None:
            unknown = set(token_loss) - {'cls_weight', 'depth_weight', 'offset_weight', 'assign'}
            if query_mode != 'spatial_tokens' or unknown:
                raise ValueError(f"MultiViewDetector: token_loss needs query_mode='spatial_tokens' and only the keys "
                                 f"cls_weight, depth_weight, offset_weight, assign; got query_mode={query_mode!r}, "
                                 f"token_loss={token_loss}")
        self.token_loss = (None if token_loss is None else dict(
            dict(cls_weight=1.0, depth_weight=0.1, offset_weight=1.0, assign=False), **token_loss))
        if token_offsets and token_loss is None:
            raise ValueError('MultiViewDetector: token_offsets=True needs token_loss (it supervises the offsets), '
                             f'got token_loss=None with query_mode={query_mode!r}')
        if pixel_loss is not None and set(pixel_loss) - {'cls_weight', 'depth_weight'}:
            raise ValueError(f'MultiViewDetector: pixel_loss takes only the keys cls_weight, depth_weight; '
                             f'got {pixel_loss}')
        if num_select is not None and (self.token_loss is None or int(num_select) != num_select or num_select < 1):
            raise ValueError(f'MultiViewDetector: num_select must be an integer >= 1 and needs token_loss (its '
                             f'classifier ranks the hypotheses), got num_select={num_select}, token_loss={token_loss}')
        self.num_select = None if num_select is None else int(num_select)
        if self.num_select is not None:
            gh, gw = self.backbone.spatial_grid
            total = self.head.decoder.layers[0].cross_attn.num_cams * gh * gw * self.depth_bins
            if self.num_select > total:
                raise ValueError(f'MultiViewDetector: num_select={num_select} exceeds the {total} token hypotheses '
                                 f'(cameras x {gh} x {gw} tokens x {self.depth_bins} depth bins)')
        self.pixel_loss = None if pixel_loss is None else dict(dict(cls_weight=1.0, depth_weight=0.1), **pixel_loss)
        if query_mode == 'spatial_tokens':
            c_last = self.backbone.embed_dims[-1]
            self.query_proj = nn.Linear(c_last, embed_dims)
            ray_dim = 6 * (1 + 2 * self.ray_num_freqs)
            self.query_pos_mlp = nn.Sequential(nn.Linear(ray_dim, embed_dims), nn.ReLU(inplace=True),
                                               nn.Linear(embed_dims, embed_dims))
            self.depth_mlp = nn.Sequential(nn.Linear(c_last, embed_dims), nn.ReLU(inplace=True),
                                           nn.Linear(embed_dims, self.depth_bins))
            self.offset_mlp = None
            if token_offsets:
                self.offset_mlp = nn.Sequential(nn.Linear(c_last, embed_dims), nn.ReLU(inplace=True),
                                                nn.Linear(embed_dims, 2 * self.depth_bins))
                nn.init.zeros_(self.offset_mlp[-1].weight)  # every hypothesis starts on its cell-centre ray
                nn.init.zeros_(self.offset_mlp[-1].bias)
            if self.depth_bins > 1:
                self.bin_embed = nn.Embedding(self.depth_bins, embed_dims)
            if self.token_loss is not None:
                self.token_cls = nn.Linear(c_last, self.depth_bins * self.head.num_classes)
                nn.init.constant_(self.token_cls.bias, -4.595)  # prior probability 0.01
        elif num_queries < 1:
            raise ValueError(f'MultiViewDetector: num_queries must be >= 1, got {num_queries}')
        if (int(global_queries) != global_queries or global_queries < 0
                or (global_queries and query_mode != 'spatial_tokens')):
            raise ValueError(f"MultiViewDetector: global_queries must be an integer >= 0 (> 0 only with "
                             f"query_mode='spatial_tokens'), got {global_queries} with query_mode={query_mode!r}")
        self.global_queries = int(global_queries)
        learned = num_queries if query_mode == 'learned' else self.global_queries
        if learned:
            self.query_embedding = nn.Embedding(learned, 2 * embed_dims)
            self.reference_points = nn.Linear(embed_dims, 3)
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)
        if self.pixel_loss is not None:
            self.pixel_head = nn.Conv2d(embed_dims, self.head.num_classes + 1, 1)  # K class logits + depth
            nn.init.constant_(self.pixel_head.bias[:-1], -4.595)  # prior probability 0.01
        self.denoising = None if denoising is None else DenoisingQueries(
            embed_dims=embed_dims, num_classes=self.head.num_classes, pc_range=self.head.pc_range, **denoising)
        # built last: the other modules' random initialisation does not depend on the variant
        dims = self.backbone.embed_dims[0 if conditioning_at == 'input' else -1] if self.has_spatial_tokens else 0
        self.conditioning = CameraConditioning(conditioning, dims) if self.has_spatial_tokens else None
        if motion is not None and (self.num_frames != 2 or motion.get('level', 0) >= self.neck.num_outs):
            raise ValueError(f'MultiViewDetector: motion needs num_frames=2 and a level below the FPN\'s '
                             f'{self.neck.num_outs}, got num_frames={num_frames}, motion={motion}')
        if motion is not None and motion.get('static_warp') and self.pixel_loss is None:
            raise ValueError('MultiViewDetector: motion static_warp=True needs pixel_loss (its pixel depth places '
                             'the static world in the previous frame)')
        self.motion = None if motion is None else DenseMotion(embed_dims=embed_dims, **motion)
        if cell_features and query_mode != 'spatial_tokens':
            raise ValueError(f"MultiViewDetector: cell_features=True needs query_mode='spatial_tokens', "
                             f"got {query_mode!r}")
        self.cell_features = CellFeatures(fpn_dims=embed_dims, token_dims=self.backbone.embed_dims[-1],
                                          grid=self.backbone.spatial_grid) if cell_features else None

    def init_weights(self) -> None:
        """mmengine's initialisation, then the ``DENSE_PARTS`` of ``pretrained`` (if set) over it."""
        super().init_weights()
        if self.pretrained is not None:
            load_dense_parts(self, self.pretrained)

    # ------------------------------------------------------------------ features and queries
    def _images(self, inputs: dict) -> Tensor:
        """``inputs['img']`` (B, N_cam, 3, H, W), checked."""
        name = type(self).__name__
        if not isinstance(inputs, dict) or 'img' not in inputs:
            raise KeyError(f"{name}: inputs must be dict(img=Tensor (B, N_cam, 3, H, W))")
        img = inputs['img']
        if img.dim() != 5 or img.shape[2] != 3:
            raise ValueError(f"{name}: inputs['img'] must be (B, N_cam, 3, H, W), got {tuple(img.shape)}")
        return img

    def _cameras(self, data_samples: Optional[dict], B: int, N: int, device: torch.device) -> MultiViewCameras:
        if not data_samples or 'cameras' not in data_samples:
            raise KeyError("MultiViewDetector: data_samples needs 'cameras' (a MultiViewCameras (B, N_cam)); "
                           'collate with sf3d.multiview_collate')
        cameras = data_samples['cameras']
        if not isinstance(cameras, MultiViewCameras) or tuple(cameras.batch_shape) != (B,) or cameras.num_cams != N:
            raise ValueError(f"MultiViewDetector: data_samples['cameras'] must be a MultiViewCameras with batch "
                             f'shape ({B},) and {N} cameras for images (B={B}, N_cam={N}), got {cameras!r}')
        return cameras.to(device=device, dtype=torch.float32)

    def extract_feats(self, img: Tensor, cameras: MultiViewCameras) -> tuple[list[Tensor], Optional[Tensor]]:
        """img (B, N, 3, H, W) -> (FPN feats [L x (B, N, C, H_l, W_l)], final spatial tokens
        (B, N, M, C_last) or None)."""
        B, N = img.shape[:2]
        x = img.flatten(0, 1)  # (B * N, 3, H, W)
        if self.has_spatial_tokens:
            grid = self.backbone.spatial_grid
            s0 = self.backbone.initial_spatial_tokens(B * N)  # (B * N, M, C0)
            if self.conditioning_at == 'input':
                s0 = self.conditioning(s0, cameras, grid, image_size=img.shape[-2:])  # (B * N, M, C0)
            out = self.backbone(x, s0)
        else:
            out = self.backbone(x)
        feats = [f.unflatten(0, (B, N)) for f in self.neck(out['features'])]  # L x (B, N, C, H_l, W_l)
        tokens = out.get('spatial_tokens')
        if tokens is not None:
            if self.conditioning_at == 'output':
                tokens = self.conditioning(tokens, cameras, self.backbone.spatial_grid,
                                           image_size=img.shape[-2:])  # (B * N, M, C_last)
            tokens = tokens.unflatten(0, (B, N))  # (B, N, M, C_last)
        return feats, tokens

    def token_queries(self, tokens: Tensor, cameras: MultiViewCameras,
                      image_size: Sequence[int]) -> dict:
        """Spatial tokens (B, N, M, C_last) -> dict(query (B, Q, C), query_pos (B, Q, C),
        ref_points (B, Q, 3) metres (LiDAR frame), depth (B, Q) metres along the query's ray,
        origins and dirs (B, Q, 3) the rays through the token cell centres, edges (B, Q, 2) each
        query's depth bin, offsets (B, Q, 2) or None the in-cell offsets), with Q = T * Z in
        camera-major, then token, then bin order (query ``t * Z + z`` is bin z of token t). Each
        reference stays on its ray (the cell-centre ray, or with ``token_offsets`` the ray through
        the offset pixel) inside the head's pc_range (module docstring)."""
        B, N, M, _ = tokens.shape
        Z = self.depth_bins
        grid, image_size = self.backbone.spatial_grid, tuple(image_size)
        with torch.no_grad():
            centres_uv = cameras.pixel_grid(grid, image_size)  # (B, N, M, 2)
            origins, dirs = cameras.rays(centres_uv)  # (B, N, M, 3) each
        origins, dirs = origins.reshape(B, N * M, 3), dirs.reshape(B, N * M, 3)  # (B, T, 3) each
        tokens = tokens.reshape(B, N * M, -1)  # (B, T, C_last)
        query = self.query_proj(tokens)  # (B, T, C)
        ray_code = fourier_features(_plucker(origins, dirs), self.ray_num_freqs).to(query.dtype)  # (B, T, 6 * (1 + 2F))
        query_pos = self.query_pos_mlp(ray_code)  # (B, T, C)
        origins, dirs = origins.repeat_interleave(Z, dim=1), dirs.repeat_interleave(Z, dim=1)  # (B, Q, 3) each
        offsets, ref_o, ref_d = None, origins, dirs
        if self.offset_mlp is not None:
            offsets = 0.5 * torch.tanh(self.offset_mlp(tokens).float()).view(B, N * M * Z, 2)  # (B, Q, 2) cells
            cell = centres_uv.new_tensor([image_size[1] / grid[1], image_size[0] / grid[0]])  # (2,) pixels (W, H)
            uv = centres_uv.repeat_interleave(Z, dim=2) + offsets.view(B, N, M * Z, 2) * cell  # (B, N, M * Z, 2)
            ref_o, ref_d = (r.reshape(B, N * M * Z, 3) for r in cameras.rays(uv))  # (B, Q, 3) each
        lo, hi = ray_depth_bounds(ref_o, ref_d, self.head.pc_range, self.depth_range)  # (B, Q) each
        edges = depth_bin_edges(lo, hi, Z)  # (B, Q, Z + 1) of each query's own ray
        z = torch.arange(Z, device=lo.device).repeat(N * M).view(1, -1, 1).expand(B, -1, 1)  # (B, Q, 1) its bin
        bins = torch.cat([edges.gather(-1, z), edges.gather(-1, z + 1)], -1)  # (B, Q, 2)
        frac = self.depth_mlp(tokens).float().sigmoid().flatten(1, 2)  # (B, Q)
        depth = bins[..., 0] + (bins[..., 1] - bins[..., 0]) * frac  # (B, Q) metres
        if Z > 1:
            query = (query[:, :, None] + self.bin_embed.weight.to(query.dtype)).flatten(1, 2)  # (B, Q, C)
            query_pos = query_pos.repeat_interleave(Z, dim=1)  # (B, Q, C)
        return dict(query=query, query_pos=query_pos, ref_points=ref_o + depth[..., None] * ref_d, depth=depth,
                    origins=origins, dirs=dirs, edges=bins, offsets=offsets)

    def learned_queries(self, B: int) -> tuple[Tensor, Tensor, Tensor]:
        """DETR3D's learned queries -> query (B, Q, C), query_pos (B, Q, C), reference points (B, Q, 3) metres."""
        query_pos, query = self.query_embedding.weight.split(self.embed_dims, dim=-1)  # (Q, C) each
        with torch.autocast(query_pos.device.type, enabled=False):  # reference points in metres stay float32
            ref = denormalize_points(self.reference_points(query_pos.float()).sigmoid(), self.head.pc_range)  # (Q, 3)
        return query.expand(B, -1, -1), query_pos.expand(B, -1, -1), ref.expand(B, -1, -1)

    def _token_outputs(self, tokens: Tensor, q: dict) -> dict:
        """Final tokens (B, N, M, C_last) and :meth:`token_queries`' dict -> the dense token predictions
        ``token_cls_scores`` (B, Q, K) logits, ``token_depths`` (B, Q), ``token_rays``, ``token_bins``
        (+ ``token_offsets`` (B, Q, 2) with ``token_offsets``)."""
        logits = self.token_cls(tokens.flatten(1, 2))  # (B, T, Z * K)
        out = dict(token_cls_scores=logits.unflatten(-1, (self.depth_bins, -1)).flatten(1, 2),  # (B, Q, K)
                   token_depths=q['depth'], token_rays=(q['origins'], q['dirs']), token_bins=q['edges'])
        if q['offsets'] is not None:
            out['token_offsets'] = q['offsets']  # (B, Q, 2)
        return out

    def _pixel_outputs(self, feats: list[Tensor]) -> Tensor:
        """FPN feats -> ``pixel_preds`` (B, N, K + 1, h, w): class logits and depth on the first level."""
        return self.pixel_head(feats[0].flatten(0, 1)).unflatten(0, feats[0].shape[:2])

    def frame_feats(self, img: Tensor, cameras: MultiViewCameras) -> tuple[list[Tensor], Optional[Tensor]]:
        """:meth:`extract_feats` of every frame: img (B, F * N, 3, H, W) frame-major -> FPN feats
        [L x (B, F * N, C, H_l, W_l)] and the CURRENT frame's spatial tokens (B, N, M, C_last) or
        None. The previous frame runs without gradient unless ``prev_frame_grad``."""
        if self.num_frames == 1:
            return self.extract_feats(img, cameras)
        N = img.shape[1] // self.num_frames
        feats, tokens = self.extract_feats(img[:, :N], cameras.select(slice(0, N)))
        with torch.set_grad_enabled(self.prev_frame_grad and torch.is_grad_enabled()):
            prev, _ = self.extract_feats(img[:, N:], cameras.select(slice(N, None)))
        return [torch.cat([cur, old], 1) for cur, old in zip(feats, prev)], tokens  # L x (B, F * N, C, h, w)

    def forward_outputs(self, img: Tensor, cameras: MultiViewCameras, dn: Optional[dict] = None,
                        frame_dt: Optional[Tensor] = None) -> dict:
        """Backbone, FPN, queries, head -> head outputs + ``ref_points`` (B, Q, 3) initial references
        (+ with token supervision: ``token_cls_scores`` (B, Q, K) logits, ``token_depths`` (B, Q),
        ``token_rays`` (origins, dirs) (B, Q, 3) each, ``token_bins`` (B, Q, 2) each query's depth
        bin; + with pixel supervision, in training:
        ``pixel_preds`` (B, N, K + 1, h, w) class logits and depth on the first FPN level; + with
        ``dn`` (:class:`DenoisingQueries`' output), run before the matching queries under its mask:
        ``dn_outputs`` = (cls (D, B, Qd, K), box codes (D, B, Qd, 10), dn); + with ``motion``:
        ``motion`` (:class:`DenseMotion`'s dict: flow, log_ratio, logits, centre)). With two frames, img
        and cameras hold F * N views (frame-major) and ``frame_dt`` (B, F) the seconds back to each
        frame; the queries, the token and the pixel predictions come from the current frame."""
        B, N = img.shape[0], img.shape[1] // self.num_frames
        all_cameras = cameras
        feats, tokens = self.frame_feats(img, cameras)
        cameras = cameras.select(slice(0, N)) if self.num_frames > 1 else cameras  # the current frame's
        if self.cell_features is not None:
            tokens = self.cell_features(tokens, feats[0][:, :N])  # (B, N, M, C_last)
        extra = {}
        if self.query_mode == 'spatial_tokens':
            q = self.token_queries(tokens, cameras, img.shape[-2:])
            query, query_pos, ref = q['query'], q['query_pos'], q['ref_points']
            if self.token_loss is not None:
                extra = self._token_outputs(tokens, q)
            if self.num_select is not None:
                keep = extra['token_cls_scores'].detach().amax(-1).topk(self.num_select, dim=1).indices  # (B, S)
                query, query_pos, ref = (x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
                                         for x in (query, query_pos, ref))  # (B, S, C), (B, S, C), (B, S, 3)
                extra['selected'] = keep
            if self.global_queries:  # after the token queries: owner indices stay valid
                query, query_pos, ref = (torch.cat([x, g.to(x.dtype)], 1) for x, g in
                                         zip((query, query_pos, ref), self.learned_queries(B)))
        else:
            query, query_pos, ref = self.learned_queries(B)
        mask, Qd = None, 0
        if dn is not None:
            Qd = dn['query'].shape[1]
            mask = dn['attn_mask'](query.shape[1], query.device)  # (B, 1, Qd + Q, Qd + Q)
            query, query_pos, ref = (torch.cat([dn[k].to(x.dtype), x], 1) for k, x in
                                     (('query', query), ('query_pos', query_pos), ('ref_points', ref)))
        outputs = self.head(query, query_pos, ref, feats, all_cameras.lidar2img, tuple(img.shape[-2:]), attn_mask=mask,
                            frame_dt=frame_dt)
        if dn is not None:
            outputs['dn_outputs'] = (outputs['all_cls_scores'][:, :, :Qd], outputs['all_bbox_preds'][:, :, :Qd], dn)
            if 'all_match' in outputs:  # (D, B, Q, K), (D, B, Q, K, 2) split as the queries
                outputs['dn_match'] = tuple(m[:, :, :Qd] for m in outputs['all_match'])
                outputs['all_match'] = tuple(m[:, :, Qd:] for m in outputs['all_match'])
            for flag in self.head.flags():  # (D, B, Q) logits each
                logits = outputs[flag.logits_key()]
                outputs[flag.logits_key('dn')], outputs[flag.logits_key()] = logits[:, :, :Qd], logits[:, :, Qd:]
            outputs['all_cls_scores'] = outputs['all_cls_scores'][:, :, Qd:]  # (D, B, Q, K)
            outputs['all_bbox_preds'] = outputs['all_bbox_preds'][:, :, Qd:]  # (D, B, Q, 10)
            ref = ref[:, Qd:]
        outputs['ref_points'] = ref
        outputs.update(extra)
        static_warp = self.motion is not None and self.motion.static_warp
        if self.pixel_loss is not None and (self.training or static_warp):
            pixel_preds = self._pixel_outputs([f[:, :N] for f in feats])  # (B, N, K + 1, h, w)
            if self.training:
                outputs['pixel_preds'] = pixel_preds
        if self.motion is not None:
            level, stride = feats[self.motion.level], self.feat_strides[self.motion.level]  # (B, 2 * N, C, h, w)
            static = None
            if static_warp:  # the pixel depth at the motion level (static_flow takes no gradient)
                depth = nn.functional.interpolate(pixel_preds[:, :, -1], size=level.shape[-2:], mode='bilinear',
                                                  align_corners=False)  # (B, N, h, w)
                static = static_flow(depth.clamp(min=1.0), cameras, all_cameras.select(slice(N, None)),
                                     stride)  # (B, N, 2, h, w) cells
            outputs['motion'] = self.motion(level[:, :N], level[:, N:], stride, static)
        return outputs

    # ------------------------------------------------------------------ mmengine interface
    def forward(self, inputs: dict, data_samples: Optional[dict] = None,
                mode: str = 'tensor') -> Union[dict, list]:
        """Run the detector.

        Args:
            inputs: ``dict(img=Tensor (B, N_cam, 3, H, W))`` normalised, padded images
                (``sf3d.multiview_collate``); H, W multiples of the backbone's size multiple.
            data_samples: collated dict with ``cameras`` (:class:`MultiViewCameras`, batch shape
                (B,), N_cam views; moved to the images' device here), and for ``'loss'``
                ``gt_bboxes_3d`` (B :class:`LiDARBoxes` or (G_b, 9) tensors ``[x, y, z_bottom, l, w,
                h, yaw, vx, vy]``) and ``gt_labels_3d`` (B LongTensors (G_b,)); ``token`` (B str)
                is copied into the predictions.
            mode: ``'loss'``, ``'predict'`` or ``'tensor'``.

        Returns:
            ``'loss'``: :meth:`DETR3DHead.loss`'s dict (``loss_cls``, ``loss_bbox``,
            ``d{i}.loss_cls``, ``d{i}.loss_bbox``), + ``token.*``, ``pixel.*``, ``motion.*`` and (in
            training) ``dn.*`` with those options on.
            ``'predict'``: B dicts ``dict(token=str or None, pred_instances_3d=dict(bboxes_3d=
            LiDARBoxes (K, 9), scores_3d (K,), labels_3d (K,) int64))`` (NuScenesMetric's format).
            ``'tensor'``: ``dict(all_cls_scores (D, B, Q, K) logits, all_bbox_preds (D, B, Q, 10)
            box codes with centres in metres, ref_points (B, Q, 3) the initial reference points
            in metres)`` (+ ``all_dir_logits`` / ``all_moving_logits`` (D, B, Q) with the head's
            ``direction`` / ``moving`` flags: the codes' yaw is then folded, ``head.final_codes`` turns it
            back and zeroes the velocity of static boxes); Q = N_cam * M * Z (or
            ``num_select``) + ``global_queries`` in spatial-token mode, ``num_queries`` otherwise.
        """
        if mode not in ('loss', 'predict', 'tensor'):
            raise ValueError(f"MultiViewDetector: mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        img = self._images(inputs)
        cameras = self._cameras(data_samples, img.shape[0], img.shape[1], img.device)
        frame_dt = None
        if self.num_frames > 1:
            per_frame = self.head.decoder.layers[0].cross_attn.num_cams
            if img.shape[1] != self.num_frames * per_frame:
                raise ValueError(f"MultiViewDetector: num_frames={self.num_frames} expects {self.num_frames} x "
                                 f"{per_frame} views (current frame first), got {img.shape[1]}; build the dataset "
                                 f"with num_frames={self.num_frames}")
            frame_dt = frame_time_deltas(data_samples, img.shape[0], self.num_frames, img.device)  # (B, F)
        dn = None
        if mode == 'loss' and self.training and self.denoising is not None:
            boxes, labels = self._ground_truth(data_samples, img.device)
            dn = self.denoising(boxes, labels)
        outputs = self.forward_outputs(img, cameras, dn, frame_dt)
        if mode == 'tensor':
            return outputs
        N = img.shape[1] // self.num_frames
        if mode == 'loss':
            prev = cameras.select(slice(N, None)) if self.num_frames > 1 else None
            return self.loss(outputs, data_samples, cameras.select(slice(0, N)), img.shape[-2:], prev,
                             None if frame_dt is None else frame_dt[:, 1])
        if 'motion' in outputs and self.motion.read_velocity:
            outputs = self._motion_velocities(outputs, cameras, frame_dt[:, 1], img.shape[-2:])
        preds = self.head.predict(outputs)
        tokens = data_samples.get('token', [None] * len(preds))
        return [dict(token=tok, pred_instances_3d=dict(bboxes_3d=LiDARBoxes(p['bboxes_3d'], validate=False),
                                                       scores_3d=p['scores_3d'], labels_3d=p['labels_3d']))
                for tok, p in zip(tokens, preds)]

    def loss(self, outputs: dict, data_samples: dict, cameras: Optional[MultiViewCameras] = None,
             image_size: Optional[Sequence[int]] = None, prev_cameras: Optional[MultiViewCameras] = None,
             time_delta: Optional[Tensor] = None) -> dict:
        """Head losses with the ground truth of ``data_samples`` moved to the outputs' device, plus
        ``token.loss_cls`` / ``token.loss_depth`` with token supervision (needs ``cameras``, the current
        frame's views, and the padded input ``image_size`` (H, W)), and ``motion.*`` with dense motion
        (needs ``prev_cameras``, the previous frame's views, and ``time_delta`` (B,) seconds)."""
        boxes, labels = self._ground_truth(data_samples, outputs['all_cls_scores'].device)
        token_losses, fixed = {}, None
        if 'token_cls_scores' in outputs:
            token_losses, owners = self._token_losses(outputs, boxes, labels, cameras, image_size)
            if self.token_loss['assign']:
                if 'selected' in outputs:  # owner hypotheses that were not selected are matched by cost
                    owners = [self._selected_index(own, keep) for own, keep in zip(owners, outputs['selected'])]
                fixed = [(own[own >= 0], (own >= 0).nonzero()[:, 0]) for own in owners]
        losses = self.head.loss(outputs, boxes, labels, fixed_assign=fixed)
        losses.update(token_losses)
        if 'dn_outputs' in outputs:
            dn_cls, dn_box, dn = outputs['dn_outputs']
            flag_logits = {flag.key: outputs[flag.logits_key('dn')] for flag in self.head.flags()}
            losses.update(self.head.dn_loss(dn_cls, dn_box, dn['labels'], dn['boxes'], outputs.get('dn_match'),
                                            flag_logits))
        if 'pixel_preds' in outputs:
            losses.update(self._pixel_losses(outputs['pixel_preds'], boxes, labels, cameras))
        if 'motion' in outputs:
            losses.update(self._motion_losses(outputs['motion'], boxes, cameras, prev_cameras, time_delta))
        return losses

    @staticmethod
    def _ground_truth(data_samples: dict, device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
        """data_samples' GT -> B (G_b, 9) float32 boxes and B (G_b,) int64 labels on ``device``."""
        missing = [k for k in ('gt_bboxes_3d', 'gt_labels_3d') if k not in data_samples]
        if missing:
            raise KeyError(f"MultiViewDetector: mode 'loss' needs data_samples keys {missing}; pack them with "
                           f"Pack3DDetInputs(keys=('img', 'gt_bboxes_3d', 'gt_labels_3d'))")
        boxes = [(b.tensor if isinstance(b, LiDARBoxes) else torch.as_tensor(b)).to(device=device, dtype=torch.float32)
                 for b in data_samples['gt_bboxes_3d']]  # B x (G_b, 9)
        labels = [torch.as_tensor(lab).to(device=device, dtype=torch.long) for lab in data_samples['gt_labels_3d']]
        return boxes, labels

    @staticmethod
    def _selected_index(index: Tensor, keep: Tensor) -> Tensor:
        """Hypothesis indices (G,) (-1: none) -> their positions among the selected ``keep`` (S,), -1 where
        not selected."""
        where = torch.full((int(keep.max()) + 1,), -1, dtype=torch.long, device=keep.device)
        where[keep] = torch.arange(keep.numel(), device=keep.device)
        inside = (index >= 0) & (index < where.numel())
        return torch.where(inside, where[index.clamp(0, where.numel() - 1)], torch.full_like(index, -1))

    def _pixel_losses(self, preds: Tensor, boxes: list[Tensor], labels: list[Tensor],
                      cameras: MultiViewCameras) -> dict:
        preds = preds.float()  # (B, N, K + 1, h, w)
        stride = self.feat_strides[0]
        targets = [pixel_targets(b, lab, cameras.sample(i), preds.shape[-2:], stride)
                   for i, (b, lab) in enumerate(zip(boxes, labels))]
        tgt_labels, tgt_depths = (torch.stack(t) for t in zip(*targets))  # (B, N, h, w) each
        logits = preds[:, :, :-1].movedim(2, -1)  # (B, N, h, w, K)
        return self._dense_losses('pixel', self.pixel_loss, logits, preds[:, :, -1], tgt_labels, tgt_depths)

    def _motion_losses(self, motion: dict, boxes: list[Tensor], cameras: MultiViewCameras,
                       prev_cameras: MultiViewCameras, dt: Tensor) -> dict:
        """Dense motion losses: targets from each sample's GT and its current and previous views."""
        stride = self.feat_strides[self.motion.level]
        targets = []
        for i, b in enumerate(boxes):
            cur = cameras.sample(i)
            cover, _ = box_cover(b, cur, motion['flow'].shape[-2:], stride)
            targets.append(motion_targets(LiDARBoxes(b, validate=False).gravity_center, b[:, 7:9], cover, cur,
                                          prev_cameras.sample(i), float(dt[i])))
        flow, log_ratio, weight = (torch.stack(t) for t in zip(*targets))  # (B, N, h, w, 2), (B, N, h, w) x 2
        return self.motion.loss(motion, flow, log_ratio, weight, stride)

    def _motion_velocities(self, outputs: dict, cameras: MultiViewCameras, dt: Tensor,
                           image_size: Sequence[int]) -> dict:
        """The last layer's box codes with the velocity read from the dense motion where a current
        view sees the box centre (:func:`~sf3d.models.layers.motion.motion_velocity`), and with
        ``heading_speed`` the heading of boxes that drive backwards turned around. The codes carry the
        full yaw (:meth:`DETR3DHead.final_codes`) and the head's ``moving`` flag zeroes the read velocity
        of static boxes too, so the flags' logits are spent here."""
        N = cameras.num_cams // 2
        codes = self.head.final_codes(outputs)  # (B, Q, 10)
        centres = codes[..., [0, 1, 4]]  # (B, Q, 3) the code's (cx, cy, cz): gravity centres
        velocity, seen = motion_velocity(outputs['motion']['flow'], outputs['motion']['log_ratio'], centres,
                                         cameras.select(slice(0, N)), cameras.select(slice(N, None)), dt, image_size)
        velocity = torch.where(seen[..., None], velocity, codes[..., 8:])  # (B, Q, 2)
        heading = codes[..., 6:8]  # (B, Q, 2) sin, cos
        if self.motion.heading_speed is not None:  # turn boxes that drive backwards (motion module docstring)
            direction = torch.stack([velocity[..., 1], velocity[..., 0]], -1)  # (sin, cos) of the motion, unnormalised
            back = seen & (velocity.norm(dim=-1) > self.motion.heading_speed) & ((heading * direction).sum(-1) < 0)
            heading = torch.where(back[..., None], -heading, heading)
        codes = torch.cat([codes[..., :6], heading, velocity], -1)
        if self.head.moving is not None:
            codes = self.head.moving.apply_to_codes(codes, outputs[self.head.moving.logits_key()][-1])
        all_preds = outputs['all_bbox_preds']
        spent = {flag.logits_key() for flag in self.head.flags()}
        outputs = {k: v for k, v in outputs.items() if k not in spent}
        return dict(outputs, all_bbox_preds=torch.cat([all_preds[:-1], codes[None].to(all_preds.dtype)], 0))

    def _dense_losses(self, name: str, weights: dict, logits: Tensor, depths: Tensor, tgt_labels: Tensor,
                      tgt_depths: Tensor) -> dict:
        """Focal loss of logits (..., K) against labels (...) (-1: background) over all positions and
        L1 of depths (...) on the labelled ones, both normalised by the number of labelled positions."""
        pos = tgt_labels >= 0
        num_pos = max(int(pos.sum()), 1)
        onehot = torch.zeros_like(logits)
        onehot[pos] = nn.functional.one_hot(tgt_labels[pos], logits.shape[-1]).to(logits.dtype)
        loss_cls = sigmoid_focal_loss(logits, onehot, alpha=self.head.alpha, gamma=self.head.gamma, reduction='sum')
        loss_depth = (depths[pos] - tgt_depths[pos]).abs().sum()
        return {f'{name}.loss_cls': weights['cls_weight'] * loss_cls / num_pos,
                f'{name}.loss_depth': weights['depth_weight'] * loss_depth / num_pos}

    def _token_losses(self, outputs: dict, boxes: list[Tensor], labels: list[Tensor], cameras: MultiViewCameras,
                      image_size: Sequence[int]) -> tuple[dict, list[Tensor]]:
        """Token targets, expanded to the depth bins: of a labelled token's Z queries, the one whose
        bin holds the target depth takes its label and depth (the others are background); owners are
        mapped to that query."""
        logits, depths = outputs['token_cls_scores'].float(), outputs['token_depths'].float()  # (B, Q, K), (B, Q)
        Z = self.depth_bins
        origins, dirs = (r[:, ::Z] for r in outputs['token_rays'])  # (B, T, 3) each
        lower = outputs['token_bins'][:, :, 0].unflatten(1, (-1, Z))  # (B, T, Z) each bin's near edge
        tgt_labels, tgt_depths, tgt_offsets, owners = [], [], [], []
        for i, (b, lab) in enumerate(zip(boxes, labels)):
            t_lab, t_depth, own, t_off = token_targets(LiDARBoxes(b, validate=False).gravity_center, lab,
                                                       cameras.sample(i), image_size, self.backbone.spatial_grid,
                                                       origins[i], dirs[i])
            z = (t_depth[:, None] >= lower[i, :, 1:]).sum(-1)  # (T,) the bin holding the target depth
            hyp = torch.full((t_lab.shape[0], Z), -1, dtype=torch.long, device=t_lab.device)  # (T, Z)
            hyp.scatter_(1, z[:, None], t_lab[:, None])
            tgt_labels.append(hyp.flatten())  # (Q,)
            tgt_depths.append(t_depth.repeat_interleave(Z))  # (Q,) read only where labelled
            tgt_offsets.append(t_off.repeat_interleave(Z, dim=0))  # (Q, 2) read only where labelled
            owned = own >= 0
            owners.append(torch.where(owned, own * Z + z[own.clamp(min=0)], own))  # (G,)
        tgt_labels, tgt_depths = torch.stack(tgt_labels), torch.stack(tgt_depths)  # (B, Q) each
        losses = self._dense_losses('token', self.token_loss, logits, depths, tgt_labels, tgt_depths)
        if 'token_offsets' in outputs:  # L1 in cell sizes on the labelled hypotheses
            pos = tgt_labels >= 0
            err = (outputs['token_offsets'].float()[pos] - torch.stack(tgt_offsets)[pos]).abs().sum()
            losses['token.loss_offset'] = self.token_loss['offset_weight'] * err / max(int(pos.sum()), 1)
        return losses, owners


def load_dense_parts(model: MultiViewDetector, checkpoint) -> None:
    """Load the ``DENSE_PARTS`` that ``model`` has from ``checkpoint`` (a path or a state dict of a
    :class:`DensePretrainer` or MultiViewDetector, unwrapped by :func:`unwrap_state_dict`), each part strictly. Raises FileNotFoundError for a missing file,
    KeyError naming a part or keys the checkpoint lacks, ValueError naming keys whose shapes differ."""
    state, source = read_checkpoint(
        checkpoint, name='MultiViewDetector', weights_only=False,
        hint='Make it with a dense-pretraining config (`python tools/train.py configs/synthetic/nuscenes_tiny_dense.py` '
             'or configs/nuscenes/sf_s_dense.py) and copy its last checkpoint there, or set model.pretrained=None '
             'to start from the backbone\'s init_cfg.')
    state = unwrap_state_dict(state)
    loaded = []
    for part in DENSE_PARTS:
        module = getattr(model, part, None)
        if module is None or not module.state_dict():
            continue
        sub = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + '.')}
        if not sub:
            raise KeyError(f'MultiViewDetector: checkpoint {source} has no {part!r} weights, which this model needs '
                           f'(it loads {[p for p in DENSE_PARTS if getattr(model, p, None) is not None]}); was it '
                           f'made with the same options (token_loss, pixel_loss, depth_bins)?')
        load_state_dict_strict(module, sub, source=source, name=f'MultiViewDetector.{part}')
        loaded.append(part)
    print_log(f'MultiViewDetector: loaded {loaded} from {source}; the queries and decoder start fresh', logger='current')
