"""Draw one nuScenes sample: the six camera views with projected 3D boxes, and a bird's-eye view.

    python tools/visualize.py --data-root data/nuscenes --ann-file nuscenes_infos_val.pkl --index 0
    python tools/visualize.py --data-root DIR --ann-file FILE --token TOKEN \
        --results work_dirs/x/results_nusc.json --score-thr 0.3 --out vis/x.png

Left: the cameras in the nuScenes layout (FRONT_LEFT, FRONT, FRONT_RIGHT / BACK_LEFT, BACK,
BACK_RIGHT), each box a wireframe with a cross on its front face (the heading); ground truth
solid green, predictions dashed red. Edges that pass behind a camera are cut at the near plane
(depth ``NEAR`` m), never wrapped around. Right: the LiDAR frame from above (ego at the
origin) with box footprints, a line from each centre to its front face, and range circles
every 10 m, turned by a multiple of 90 degrees so that the ego's forward direction is up
(nuScenes' LIDAR_TOP has x right, y forward; see ``bev_axes``).

GT is what the devkit evaluates (``bbox_3d_isvalid``, detection classes) from the info file,
read by ``NuScenesMultiViewDataset``. Predictions come from a ``results_nusc.json`` (global
frame) and go to the LiDAR frame with ``sf3d.structures.from_nusc_boxes`` and the sample's
``lidar2ego`` / ``ego2global``. Drawing uses matplotlib's Agg canvas only (no windows).
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CAMERA_GRID = (('CAM_FRONT_LEFT', 'CAM_FRONT', 'CAM_FRONT_RIGHT'),
               ('CAM_BACK_LEFT', 'CAM_BACK', 'CAM_BACK_RIGHT'))
NEAR = 0.1  # m, camera depth at which edges are cut
RANGE_CIRCLES = (10, 20, 30, 40, 50)  # m
BEV_LIMIT = 55.0  # m, half extent of the BEV plot
GT_STYLE = dict(color='#00e000', linestyle='solid')
PRED_STYLE = dict(color='#ff2020', linestyle=(0, (4, 2)))
# corner pairs in the devkit corner order (sf3d.structures.boxes): front face 0-3, rear face 4-7
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7],
                      [0, 2], [1, 3]])  # the last two: the cross on the front face (heading mark)
FOOTPRINT = [3, 2, 6, 7]  # bottom corners: front-left, front-right, rear-right, rear-left


# ----------------------------------------------------------------------------- geometry

def clip_segments_near(segments: np.ndarray, near: float = NEAR) -> Tuple[np.ndarray, np.ndarray]:
    """Cut camera-frame segments at the plane ``z = near``.

    Args:
        segments: (S, 2, 3) segment end points in the camera frame (z = depth).
        near: depth of the clipping plane in m.
    Returns:
        clipped (K, 2, 3): the parts with z >= near (an end point behind the plane moves along
        the segment onto it), and keep (S,) bool: which input segments survive (K = keep.sum()).
    """
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 2, 3)
    z0, z1 = seg[:, 0, 2], seg[:, 1, 2]
    keep = (z0 >= near) | (z1 >= near)
    seg = seg[keep].copy()
    z0, z1 = seg[:, 0, 2], seg[:, 1, 2]
    for end, z_end, z_other in ((0, z0, z1), (1, z1, z0)):
        behind = z_end < near
        t = (near - z_other[behind]) / (z_end[behind] - z_other[behind])  # from the visible end, in (0, 1]
        other = seg[behind, 1 - end]
        seg[behind, end] = other + t[:, None] * (seg[behind, end] - other)
        seg[behind, end, 2] = near  # exact, despite rounding
    return seg, keep


def camera_segments(corners: np.ndarray, cam2img: np.ndarray, lidar2cam: np.ndarray,
                    near: float = NEAR) -> List[np.ndarray]:
    """Pixel segments of box wireframes (``BOX_EDGES``) in one camera, cut at the near plane.

    Args:
        corners: (N, 8, 3) LiDAR-frame corners in the devkit order (``LiDARBoxes.corners``).
        cam2img: (3, 3) intrinsics; lidar2cam: (4, 4).
    Returns:
        per box a (K, 2, 2) array of (u, v) pixel end points (pixel centres at j + 0.5),
        K <= len(BOX_EDGES); K = 0 for a box entirely behind the camera.
    """
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 8, 3)
    k, l2c = np.asarray(cam2img, dtype=np.float64), np.asarray(lidar2cam, dtype=np.float64)
    cam = corners @ l2c[:3, :3].T + l2c[:3, 3]  # (N, 8, 3) camera frame
    out = []
    for box in cam:
        seg, _ = clip_segments_near(box[BOX_EDGES], near)  # (K, 2, 3)
        pix = seg @ k.T  # (K, 2, 3) as (u d, v d, d)
        out.append(pix[..., :2] / pix[..., 2:])
    return out


def results_to_lidar_boxes(records: Sequence[dict], lidar2ego, ego2global, where: str = 'results'):
    """``results_nusc.json`` box records (global frame) -> (LiDARBoxes, labels (N,), scores (N,)).

    The one conversion, ``sf3d.structures.from_nusc_boxes``; labels index ``CLASSES``.
    """
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    from sf3d.datasets.nuscenes_info import CLASSES
    from sf3d.structures import from_nusc_boxes

    boxes, labels, scores = [], [], []
    for i, r in enumerate(records):
        missing = [key for key in ('translation', 'size', 'rotation', 'detection_name', 'detection_score')
                   if key not in r]
        if missing:
            raise ValueError(f'{where}: box {i} lacks {", ".join(missing)} (a results_nusc.json box needs '
                             'translation, size (w, l, h), rotation (w, x, y, z), velocity, detection_name, '
                             'detection_score)')
        if r['detection_name'] not in CLASSES:
            raise ValueError(f'{where}: box {i} has detection_name {r["detection_name"]!r}, not one of {CLASSES}')
        vx, vy = r.get('velocity', (0.0, 0.0))[:2]
        boxes.append(Box(r['translation'], r['size'], Quaternion(r['rotation']), velocity=(vx, vy, 0.0)))
        labels.append(CLASSES.index(r['detection_name']))
        scores.append(float(r['detection_score']))
    return (from_nusc_boxes(boxes, lidar2ego, ego2global), np.asarray(labels, dtype=np.int64),
            np.asarray(scores, dtype=np.float64))


def load_predictions(results_path: str, token: str, lidar2ego, ego2global, score_thr: float = 0.0):
    """The boxes of sample ``token`` with score >= ``score_thr`` from a ``results_nusc.json``,
    in the LiDAR frame: (LiDARBoxes, labels (N,), scores (N,))."""
    import torch

    if not osp.isfile(results_path):
        raise FileNotFoundError(f'results file {results_path} not found')
    with open(results_path) as f:
        submission = json.load(f)
    if not isinstance(submission, dict) or not isinstance(submission.get('results'), dict):
        raise ValueError(f'{results_path} is not a nuScenes results file: expected {{"meta": ..., '
                         '"results": {sample_token: [box, ...]}}')
    results = submission['results']
    if token not in results:
        raise KeyError(f'{results_path} has no boxes for sample token {token} (it holds {len(results)} sample '
                       'tokens; was it written for this split / info file?)')
    boxes, labels, scores = results_to_lidar_boxes(results[token], lidar2ego, ego2global,
                                                   where=f'{results_path} sample {token}')
    keep = scores >= score_thr
    return boxes[torch.from_numpy(keep)], labels[keep], scores[keep]


# ----------------------------------------------------------------------------- drawing

def figure_size(image_hw: Tuple[int, int], panel_width: int) -> Tuple[int, int]:
    """(width, height) in pixels of the figure: 3 x 2 camera panels of ``panel_width`` pixels
    (height from the image aspect) and a square BEV panel as tall as both rows."""
    panel_height = int(round(panel_width * image_hw[0] / image_hw[1]))
    return 3 * panel_width + 2 * panel_height, 2 * panel_height


def _read_images(info: dict) -> Dict[str, np.ndarray]:
    from PIL import Image

    images = {}
    for cam in (c for row in CAMERA_GRID for c in row):
        path = info['images'][cam]['img_path']
        if not osp.isfile(path):
            raise FileNotFoundError(f'image of {cam} for sample {info.get("token")} not found: {path}')
        images[cam] = np.asarray(Image.open(path).convert('RGB'))
    return images


def _add_segments(ax, segments: List[np.ndarray], style: dict, linewidth: float) -> None:
    from matplotlib.collections import LineCollection

    segs = [s for s in segments if len(s)]
    if segs:
        ax.add_collection(LineCollection(np.concatenate(segs), linewidths=linewidth, **style))


def bev_axes(lidar2ego) -> np.ndarray:
    """(2, 2) map from LiDAR (x, y) to BEV plot coordinates: a multiple of 90 degrees chosen so
    that the ego's forward direction points up (nuScenes' LIDAR_TOP has x right, y forward, so
    there it is the identity; a LiDAR frame with x forward gives (-y, x))."""
    forward = np.asarray(lidar2ego, dtype=np.float64)[:3, :3].T @ np.array([1.0, 0.0, 0.0])  # ego x in LiDAR
    quarter = int(np.round((np.pi / 2 - np.arctan2(forward[1], forward[0])) / (np.pi / 2))) % 4
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
    return np.array([[c, -s], [s, c]], dtype=np.float64)


def _axis_label(direction: np.ndarray, what: str) -> str:
    """'LiDAR +x (m, right)' for a unit plot axis given in LiDAR (x, y)."""
    i = int(np.argmax(np.abs(direction)))
    return f'LiDAR {"+" if direction[i] > 0 else "-"}{"xy"[i]} (m, {what})'


def _draw_bev(ax, gt_corners: np.ndarray, pred_corners: np.ndarray, plot_from_lidar: np.ndarray,
              linewidth: float) -> None:
    """Range circles, the ego (forward = up), box footprints and heading lines (centre -> front)."""
    from matplotlib.patches import Circle, Polygon

    for r in RANGE_CIRCLES:
        ax.add_patch(Circle((0, 0), r, fill=False, color='0.75', linewidth=0.6))
        ax.text(r * 0.7071, r * 0.7071, f'{r} m', color='0.45', fontsize=6)
    ax.add_patch(Polygon([(-0.9, -2.6), (0.9, -2.6), (0.9, 1.8), (-0.9, 1.8)], closed=True, color='k'))
    ax.annotate('', xy=(0, 6), xytext=(0, 1.8), arrowprops=dict(arrowstyle='->', color='k', lw=1))
    for corners, style in ((gt_corners, GT_STYLE), (pred_corners, PRED_STYLE)):
        for box in corners:
            xy = box[FOOTPRINT, :2] @ plot_from_lidar.T  # (4, 2) plot coordinates
            ax.add_patch(Polygon(xy, closed=True, fill=False, linewidth=linewidth, **style))
            front, centre = xy[:2].mean(axis=0), xy.mean(axis=0)
            ax.plot([centre[0], front[0]], [centre[1], front[1]], linewidth=linewidth, **style)
    ax.set_xlim(-BEV_LIMIT, BEV_LIMIT)
    ax.set_ylim(-BEV_LIMIT, BEV_LIMIT)
    ax.set_aspect('equal')
    ax.set_xlabel(_axis_label(plot_from_lidar[0], 'right'), fontsize=7)
    ax.set_ylabel(_axis_label(plot_from_lidar[1], 'forward'), fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(True, color='0.92', linewidth=0.5)
    ax.set_axisbelow(True)


def draw_sample(info: dict, gt_boxes, pred_boxes, out_path: str, *, panel_width: int = 640,
                near: float = NEAR, title: Optional[str] = None) -> str:
    """Write the figure of one sample to ``out_path`` (PNG); returns the path.

    Args:
        info: ``NuScenesMultiViewDataset.get_data_info`` dict: ``images[CAM]`` with ``img_path``,
            ``cam2img`` (3, 3), ``lidar2cam`` (4, 4) for the six cameras; ``lidar2ego`` (4, 4)
            (BEV orientation); ``token``.
        gt_boxes, pred_boxes: ``LiDARBoxes`` (or None) in the sample's LiDAR frame.
        panel_width: width of one camera panel in pixels (``figure_size`` gives the PNG size).
        near: near-plane depth in m for cutting edges.
        title: text over the BEV panel (default: the token and box counts).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    images = _read_images(info)
    gt = np.zeros((0, 8, 3)) if gt_boxes is None else gt_boxes.corners.double().numpy()
    pred = np.zeros((0, 8, 3)) if pred_boxes is None else pred_boxes.corners.double().numpy()
    width, height = figure_size(images['CAM_FRONT'].shape[:2], panel_width)
    panel_height = height / 2
    linewidth = max(0.8, panel_width / 500)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    for row, cams in enumerate(CAMERA_GRID):
        for col, cam in enumerate(cams):
            rect = (col * panel_width / width, 1 - (row + 1) * panel_height / height,
                    panel_width / width, panel_height / height)
            ax = fig.add_axes(rect)
            img = images[cam]
            h, w = img.shape[:2]
            ax.imshow(img, extent=(0, w, h, 0), aspect='auto', interpolation='bilinear')
            cam_info = info['images'][cam]
            for corners, style in ((gt, GT_STYLE), (pred, PRED_STYLE)):
                _add_segments(ax, camera_segments(corners, cam_info['cam2img'], cam_info['lidar2cam'], near),
                              style, linewidth)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.axis('off')
            ax.text(6, 6, cam, color='w', fontsize=8, va='top', ha='left',
                    bbox=dict(facecolor='k', alpha=0.55, pad=2, linewidth=0))
    bev_left = 3 * panel_width / width
    bev_width = 1 - bev_left
    ax = fig.add_axes((bev_left + 0.12 * bev_width, 0.07, 0.84 * bev_width, 0.86))
    _draw_bev(ax, gt, pred, bev_axes(info['lidar2ego']), linewidth)
    ax.set_title(title if title is not None else
                 f'{info.get("token")}\nGT {len(gt)}, predictions {len(pred)} (LiDAR frame, BEV)', fontsize=7)
    ax.legend(handles=[Line2D([], [], linewidth=linewidth, label='ground truth', **GT_STYLE),
                       Line2D([], [], linewidth=linewidth, label='prediction', **PRED_STYLE)],
              loc='lower right', fontsize=6)
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100, format='png')
    return out_path


# ----------------------------------------------------------------------------- sample selection

def _resolve_ann_file(data_root: str, ann_file: str) -> str:
    for candidate in (ann_file, osp.join(data_root, ann_file)):
        if osp.isfile(candidate):
            return osp.abspath(candidate)
    raise FileNotFoundError(f'info file {ann_file} not found (looked at {ann_file} and '
                            f'{osp.join(data_root, ann_file)}); write it with tools/create_data.py nuscenes')


def load_dataset(data_root: str, ann_file: str):
    """``NuScenesMultiViewDataset`` with the GT the devkit evaluates (``use_valid_flag``)."""
    from sf3d.datasets.nuscenes_dataset import NuScenesMultiViewDataset

    return NuScenesMultiViewDataset(ann_file=_resolve_ann_file(data_root, ann_file), data_root=data_root,
                                    use_valid_flag=True, serialize_data=False)


def select_sample(dataset, index: Optional[int] = None, token: Optional[str] = None) -> dict:
    """``get_data_info`` of the sample at ``index`` or with ``token`` (clear errors otherwise)."""
    n = len(dataset)
    if token is not None:
        tokens = [d['token'] for d in dataset.data_list]
        if token not in tokens:
            raise KeyError(f'sample token {token} not in {dataset.ann_file} ({n} samples)')
        index = tokens.index(token)
    if index is None or not 0 <= index < n:
        raise IndexError(f'index {index} out of range: {dataset.ann_file} has {n} samples (valid: 0 to {n - 1})')
    return dataset.get_data_info(index)


def visualize(data_root: str, ann_file: str, index: Optional[int] = None, token: Optional[str] = None,
              results: Optional[str] = None, score_thr: float = 0.3, out: Optional[str] = None,
              panel_width: int = 640) -> str:
    """Load one sample (+ its predictions) and draw it; returns the PNG path (default vis/<token>.png)."""
    info = select_sample(load_dataset(data_root, ann_file), index, token)
    pred = None
    if results is not None:
        pred, _, _ = load_predictions(results, info['token'], info['lidar2ego'], info['ego2global'], score_thr)
    out = out or osp.join('vis', f'{info["token"]}.png')
    return draw_sample(info, info.get('gt_bboxes_3d'), pred, out, panel_width=panel_width)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', required=True, help='nuScenes dataroot (holds samples/)')
    parser.add_argument('--ann-file', required=True, help='info file (a path, or relative to --data-root)')
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument('--index', type=int, help='sample position in the info file')
    which.add_argument('--token', help='sample token')
    parser.add_argument('--results', help='results_nusc.json with predictions (global frame)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='draw predictions with score >= this')
    parser.add_argument('--out', help='PNG to write (default vis/<token>.png)')
    parser.add_argument('--panel-width', type=int, default=640, help='camera panel width in pixels')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        path = visualize(args.data_root, args.ann_file, args.index, args.token, args.results, args.score_thr,
                         args.out, args.panel_width)
    except (FileNotFoundError, ValueError, KeyError, IndexError) as err:
        print(f'error: {err.args[0] if isinstance(err, KeyError) else err}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
