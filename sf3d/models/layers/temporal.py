"""Two-frame temporal input of the multi-view detector: where each query looks in the previous frame.

A temporal sample carries its previous key frame's views after the current ones, frame-major
(view ``f * N + i`` is camera i of frame f; f = 0 is the current frame), every camera expressed
from the CURRENT LiDAR frame: the dataset composes the ego motion between the two LiDAR frames
into the previous cameras' ``lidar2cam`` (``NuScenesMultiViewDataset(num_frames=2)``), so ego
motion needs no further handling here.

Object motion does. As in Sparse4D's temporal sampling, a query whose box centre is ``p`` and
whose velocity is ``v`` (m/s, LiDAR frame, what the head regresses) was at ``p - v * dt_f`` when
frame f was taken, ``dt_f`` seconds before the current sample (:func:`frame_references`). The
time enters in seconds, not as a frame count, so a gap of 0.5 s or of 0.25 s asks the same
velocity for the same motion. Each decoder layer starts from the velocity of the layer before
(zero for the first).

Sampling the previous frame at one point does not say where the object was: inside a uniform
object every point looks alike (the aperture problem), and the first layer has no velocity yet.
:class:`VelocityMatching` therefore samples the previous frame at a grid of velocity hypotheses
around the current estimate, ``p - (v + dv_k) * dt``, scores each sample against what the query
sees in the current frame (a dot product of learned low-dimensional projections, softmax over k),
and returns the score-weighted velocity (a soft arg-max, differentiable). The head can supervise
the scores directly (:func:`matching_loss`: cross-entropy against a Gaussian around the GT
velocity, for the queries matched to a GT and the denoising queries; off by default, README
"Temporal input" says why). The decoder then samples the previous frame's features once, where
that velocity puts the object, and the head regresses the velocity as a residual on top of the
matched one.

The first sample of a scene has no previous frame: its previous views are copies of the current
ones with ``dt = 0`` (PETRv2's fallback), so the two samples coincide.

Axis names: B batch, F frames, Q queries, K velocity hypotheses, C channels, C_m matching channels.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['VelocityMatching', 'frame_references', 'frame_time_deltas', 'matching_loss', 'velocity_grid']


def frame_references(ref_points: Tensor, velocity: Tensor, frame_dt: Tensor) -> Tensor:
    """Where each query's centre was in every frame.

    Args:
        ref_points: (B, Q, 3) centres in metres, current LiDAR frame.
        velocity: (B, Q, 2) m/s (vx, vy) in the same frame; z does not move.
        frame_dt: (B, F) seconds from each frame back to the current sample (frame 0: 0).
    Returns:
        (B, F, Q, 3) ``p - (vx, vy, 0) * dt_f`` in metres, current LiDAR frame.
    """
    B, Q = ref_points.shape[:2]
    if ref_points.shape != (B, Q, 3) or velocity.shape != (B, Q, 2) or frame_dt.dim() != 2 or frame_dt.shape[0] != B:
        raise ValueError(f'frame_references: expected ref_points (B, Q, 3), velocity (B, Q, 2), frame_dt (B, F), '
                         f'got {tuple(ref_points.shape)}, {tuple(velocity.shape)}, {tuple(frame_dt.shape)}')
    motion = torch.cat([velocity.float(), velocity.new_zeros(B, Q, 1, dtype=torch.float32)], -1)  # (B, Q, 3)
    return ref_points.float()[:, None] - frame_dt.float()[:, :, None, None] * motion[:, None]  # (B, F, Q, 3)


def velocity_grid(size: int, step: float) -> Tensor:
    """(size * size, 2) velocity offsets (m/s) of a square grid centred on zero, ``step`` apart
    (x-major): ``size`` must be odd so that zero is one of them."""
    if int(size) != size or size < 1 or size % 2 == 0 or not step > 0:
        raise ValueError(f'velocity_grid: size must be an odd integer >= 1 and step > 0, got {size}, {step}')
    axis = (torch.arange(size, dtype=torch.float32) - size // 2) * step  # (size,)
    return torch.stack(torch.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)  # (size * size, 2)


class VelocityMatching(nn.Module):
    """Where was the query's object in the previous frame: score K velocity hypotheses by matching
    the previous frame against the current one (module docstring).

    ``forward(current (B, Q, C) the query's weighted current-frame sample, ref (B, Q, 3) metres,
    velocity (B, Q, 2) m/s the estimate so far, dt (B,) seconds back to the previous frame,
    key_fn (points (B, Q * K, 3) -> keys (B, Q * K, C_m))) -> (matched velocity (B, Q, 2),
    log-weights (B, Q, K), hypotheses (B, Q, K, 2) m/s)``: the softmax over the K hypotheses
    ``velocity + dv_k`` of ``<W_q current, key_k> / sqrt(C_m)`` weighs their velocities. ``key_fn``
    samples the previous frame's key map (:meth:`keys` of one FPN level: C_m channels instead of C
    keep the K samples cheap) at ``ref - (velocity + dv_k) * dt``.
    At ``dt = 0`` (no previous frame) every hypothesis samples the same point: the weights are
    uniform and the matched velocity is the estimate itself.

    Args:
        embed_dims: C; match_dims: C_m of the query and key projections; grid, step: the hypotheses
            (:func:`velocity_grid`: grid x grid offsets ``step`` m/s apart around the estimate);
        level: the FPN level whose previous-frame features are matched.
    """

    def __init__(self, *, embed_dims: int = 256, match_dims: int = 16, grid: int = 5, step: float = 4.0,
                 level: int = 1):
        super().__init__()
        self.register_buffer('offsets', velocity_grid(grid, step), persistent=False)  # (K, 2)
        self.step = float(step)
        self.level = int(level)
        self.query_proj = nn.Linear(embed_dims, match_dims)
        self.key_proj = nn.Linear(embed_dims, match_dims)
        self.scale = 1.0 / math.sqrt(match_dims)

    def keys(self, feat: Tensor) -> Tensor:
        """Previous-frame features (B, N, C, h, w) of ``level`` -> key map (B, N, C_m, h, w)."""
        return self.key_proj(feat.movedim(2, -1)).movedim(-1, 2)

    def forward(self, current: Tensor, ref: Tensor, velocity: Tensor, dt: Tensor,
                key_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        B, Q, _ = current.shape
        K = self.offsets.shape[0]
        hyp = velocity.float()[:, :, None] + self.offsets  # (B, Q, K, 2)
        points = frame_references(ref.float().repeat_interleave(K, 1), hyp.flatten(1, 2),
                                  dt.float()[:, None])[:, 0]  # (B, Q * K, 3) the previous frame only
        keys = key_fn(points).view(B, Q, K, -1)  # (B, Q, K, C_m)
        logits = (self.query_proj(current)[:, :, None] * keys).sum(-1) * self.scale  # (B, Q, K)
        log_weights = logits.float().log_softmax(-1)  # (B, Q, K)
        return (log_weights.exp()[..., None] * hyp).sum(2), log_weights, hyp  # (B, Q, 2), (B, Q, K), (B, Q, K, 2)


def matching_loss(log_weights: Tensor, hypotheses: Tensor, target: Tensor, sigma: float) -> Tensor:
    """Cross-entropy of the match scores against soft targets around the GT velocity.

    Args:
        log_weights: (P, K) log-softmax over a query's hypotheses; hypotheses: (P, K, 2) m/s.
        target: (P, 2) GT velocity m/s; sigma: width (m/s) of the target ``softmax_k(-|h_k - v|^2 / 2 sigma^2)``.
    Returns:
        (P,) ``-sum_k t_k log w_k``.
    """
    dist2 = (hypotheses.float() - target.float()[:, None]).pow(2).sum(-1)  # (P, K)
    soft = (-dist2 / (2 * sigma ** 2)).softmax(-1)  # (P, K)
    return -(soft * log_weights.float()).sum(-1)


def frame_time_deltas(data_samples: Optional[dict], batch_size: int, num_frames: int,
                      device: torch.device) -> Tensor:
    """(B, F) seconds from each frame back to the current sample, from the collated ``time_delta``
    (B floats: current minus previous sample timestamp; 0 where the previous frame fell back to
    the current one). Only two frames are supported."""
    if num_frames != 2:
        raise ValueError(f'frame_time_deltas: only num_frames=2 is supported, got {num_frames}')
    values = (data_samples or {}).get('time_delta')
    if values is None or len(values) != batch_size:
        raise KeyError("two-frame input needs data_samples['time_delta'] (B floats, seconds from the previous key "
                       "frame; NuScenesMultiViewDataset(num_frames=2) writes it and Pack3DDetInputs packs it), got "
                       + ('none' if values is None else f'{len(values)} values for a batch of {batch_size}'))
    dt = torch.as_tensor([float(v) for v in values], dtype=torch.float32, device=device)  # (B,)
    if not torch.isfinite(dt).all() or (dt < 0).any():
        raise ValueError(f"data_samples['time_delta'] must be finite and >= 0 seconds, got {dt.tolist()}")
    return torch.stack([torch.zeros_like(dt), dt], -1)  # (B, 2)
