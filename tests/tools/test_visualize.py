"""tools/visualize.py on the synthetic nuScenes set: PNG size, the global -> LiDAR round trip of a
results file (predictions land on the GT wireframes), near-plane clipping against hand cases,
projected pixels against an independent numpy pinhole projection, BEV orientation, and errors."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sf3d.datasets.nuscenes_info import CAMERAS, CLASSES
from sf3d.structures import LiDARBoxes, pose_matrix, to_nusc_boxes
from tool_loader import load_tool



tool = load_tool('visualize')


@pytest.fixture(scope='module')
def root(nuscenes_root):
    return nuscenes_root


@pytest.fixture(scope='module')
def dataset(root):
    return tool.load_dataset(str(root), 'nuscenes_infos_val.pkl')


@pytest.fixture(scope='module')
def info(dataset):
    return dataset.get_data_info(0)


def _records(info, boxes: LiDARBoxes, scores):
    """results_nusc.json box records, as NuScenesMetric writes them (global frame)."""
    names = [CLASSES[k] for k in info['gt_labels_3d']]
    nusc = to_nusc_boxes(boxes, info['lidar2ego'], info['ego2global'], scores=scores, names=names)
    return [dict(sample_token=info['token'], translation=b.center.tolist(), size=b.wlh.tolist(),
                 rotation=b.orientation.elements.tolist(), velocity=b.velocity[:2].tolist(),
                 detection_name=b.name, detection_score=float(b.score), attribute_name='') for b in nusc]


def _write_results(path, results):
    path.write_text(json.dumps(dict(meta=dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False,
                                              use_external=False), results=results)))
    return str(path)


def _pinhole(points, cam2img, lidar2cam):
    """Independent projection: (P, 3) LiDAR points -> (P, 2) pixels and (P,) depths."""
    p = np.asarray(cam2img) @ np.asarray(lidar2cam)[:3] @ np.concatenate([points, np.ones((len(points), 1))], 1).T
    return (p[:2] / p[2]).T, p[2]


def test_png_written_with_expected_size(info, tmp_path):
    assert Image.open(info['images']['CAM_FRONT']['img_path']).size == (400, 225)
    out = tool.draw_sample(info, info['gt_bboxes_3d'], info['gt_bboxes_3d'][:3], str(tmp_path / 'a' / 'x.png'),
                           panel_width=320)
    # 3 panels of 320 x 180 (16:9 images) + a square BEV panel 2 x 180 high
    assert out == str(tmp_path / 'a' / 'x.png') and Image.open(out).size == (3 * 320 + 360, 360)
    assert tool.figure_size((900, 1600), 640) == (2640, 720)


def test_cli_default_output_and_results(root, dataset, info, tmp_path, monkeypatch, capsys):
    results = _write_results(tmp_path / 'results_nusc.json',
                             {info['token']: _records(info, info['gt_bboxes_3d'],
                                                      np.full(len(info['gt_bboxes_3d']), 0.9))})
    monkeypatch.chdir(tmp_path)
    assert tool.main(['--data-root', str(root), '--ann-file', 'nuscenes_infos_val.pkl', '--token', info['token'],
                      '--results', results, '--panel-width', '240']) == 0
    out = Path('vis') / f'{info["token"]}.png'
    assert capsys.readouterr().out.strip() == str(out)
    assert Image.open(out).size == (3 * 240 + 2 * 135, 2 * 135)


def test_results_round_trip_to_gt(info, tmp_path):
    gt = info['gt_bboxes_3d']
    assert len(gt) > 5
    records = _records(info, gt, np.linspace(0.4, 1.0, len(gt)))
    low = dict(records[0], detection_score=0.1)  # below the threshold: dropped
    path = _write_results(tmp_path / 'results_nusc.json', {info['token']: records + [low], 'other': []})
    pred, labels, scores = tool.load_predictions(path, info['token'], info['lidar2ego'], info['ego2global'], 0.3)
    assert len(pred) == len(gt) and (labels == info['gt_labels_3d']).all() and scores.min() >= 0.4
    a, b = pred.tensor.numpy(), gt.tensor.numpy()
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    # a results file holds only the global (vx, vy); the ego pose's small tilt moves a bit of the
    # LiDAR-frame velocity into the dropped global vz
    np.testing.assert_allclose(a[:, 7:], b[:, 7:], atol=0.02)
    np.testing.assert_allclose(np.angle(np.exp(1j * (a[:, 6] - b[:, 6]))), 0, atol=1e-7)
    # so the prediction wireframes coincide with the GT ones in every camera
    for cam in CAMERAS:
        c = info['images'][cam]
        for s_pred, s_gt in zip(tool.camera_segments(pred.corners.numpy(), c['cam2img'], c['lidar2cam']),
                                tool.camera_segments(gt.corners.numpy(), c['cam2img'], c['lidar2cam'])):
            np.testing.assert_allclose(s_pred, s_gt, atol=1e-4)


def test_near_plane_clipping_hand_cases():
    segs = np.array([[[1.0, 0.0, -1.0], [5.0, 0.0, 3.0]],   # behind -> front: cut at depth 0.1
                     [[5.0, 0.0, 3.0], [1.0, 0.0, -1.0]],   # the same, reversed
                     [[0.0, 1.0, -2.0], [0.0, 2.0, -0.5]],  # entirely behind: dropped
                     [[0.0, 1.0, 2.0], [4.0, 2.0, 6.0]]])   # entirely in front: unchanged
    clipped, keep = tool.clip_segments_near(segs, near=0.1)
    assert keep.tolist() == [True, True, False, True]
    # t = (0.1 - (-1)) / (3 - (-1)) = 0.275 along the edge: x = 1 + 0.275 * 4 = 2.1
    np.testing.assert_allclose(clipped[0], [[2.1, 0.0, 0.1], [5.0, 0.0, 3.0]], atol=1e-12)
    np.testing.assert_allclose(clipped[1], [[5.0, 0.0, 3.0], [2.1, 0.0, 0.1]], atol=1e-12)
    np.testing.assert_array_equal(clipped[2], segs[3])


def test_projected_pixels_equal_numpy_pinhole(info):
    corners = info['gt_bboxes_3d'].corners.numpy()
    checked = 0
    for cam in CAMERAS:
        c = info['images'][cam]
        for box, segs in zip(corners, tool.camera_segments(corners, c['cam2img'], c['lidar2cam'])):
            uv, depth = _pinhole(box, c['cam2img'], c['lidar2cam'])
            if (depth > 0.1).all():  # fully in front: the segments are the projected corners
                np.testing.assert_allclose(segs, uv[tool.BOX_EDGES], atol=1e-6)
                checked += 1
            elif (depth < 0.1).all():
                assert segs.shape == (0, 2, 2)
    assert checked >= 6


def test_box_around_a_camera_is_cut_at_the_near_plane(info):
    c = info['images']['CAM_FRONT']
    centre = np.linalg.inv(c['lidar2cam'])[:3, 3]  # the camera centre in the LiDAR frame
    box = LiDARBoxes(np.array([[centre[0], centre[1], centre[2] - 1.5, 4.0, 3.0, 3.0, 0.3, 0, 0]]))
    corners = box.corners.numpy()[0]
    segs = tool.camera_segments(corners[None], c['cam2img'], c['lidar2cam'], near=0.1)[0]
    cam = corners @ c['lidar2cam'][:3, :3].T + c['lidar2cam'][:3, 3]  # (8, 3) camera frame, independently
    expected = []
    for i, j in tool.BOX_EDGES:
        p, q = cam[i], cam[j]
        if p[2] < 0.1 and q[2] < 0.1:
            continue
        if p[2] < 0.1:
            p = q + (0.1 - q[2]) / (p[2] - q[2]) * (p - q)
        if q[2] < 0.1:
            q = p + (0.1 - p[2]) / (q[2] - p[2]) * (q - p)
        expected.append([p, q])
    expected = np.asarray(expected) @ np.asarray(c['cam2img']).T
    assert 0 < len(expected) < len(tool.BOX_EDGES) and (cam[:, 2] < 0).any()  # a mixed case
    np.testing.assert_allclose(segs, expected[..., :2] / expected[..., 2:], rtol=1e-9)


def test_bev_orientation(info):
    nusc_lidar2ego = pose_matrix([0.94, 0.0, 1.84], [0.7071068, 0.0, 0.0, -0.7071068])  # LIDAR_TOP: x right
    np.testing.assert_allclose(tool.bev_axes(nusc_lidar2ego), np.eye(2), atol=1e-12)
    np.testing.assert_allclose(tool.bev_axes(np.eye(4)), [[0, -1], [1, 0]])  # x forward: plot (-y, x)
    forward = np.linalg.inv(info['lidar2ego'])[:2, 0]  # ego +x in the LiDAR frame
    up = tool.bev_axes(info['lidar2ego']) @ forward
    assert up[1] > 0.99 * np.linalg.norm(forward)


def test_errors(root, dataset, info, tmp_path, capsys):
    n = len(dataset)
    with pytest.raises(IndexError, match=f'has {n} samples'):
        tool.select_sample(dataset, index=n)
    with pytest.raises(KeyError, match='sample token nope not in'):
        tool.select_sample(dataset, token='nope')
    assert tool.select_sample(dataset, token=info['token'])['token'] == info['token']
    other = _write_results(tmp_path / 'other.json', {'tok': []})
    with pytest.raises(KeyError, match=f'no boxes for sample token {info["token"]}'):
        tool.load_predictions(other, info['token'], info['lidar2ego'], info['ego2global'])
    with pytest.raises(FileNotFoundError, match='missing.json'):
        tool.load_predictions(str(tmp_path / 'missing.json'), info['token'], info['lidar2ego'], info['ego2global'])
    (tmp_path / 'bad.json').write_text('[]')
    with pytest.raises(ValueError, match='not a nuScenes results file'):
        tool.load_predictions(str(tmp_path / 'bad.json'), info['token'], info['lidar2ego'], info['ego2global'])
    with open(root / 'nuscenes_infos_val.pkl', 'rb') as f:
        data = pickle.load(f)
    data['data_list'][0]['images']['CAM_BACK']['img_path'] = 'samples/CAM_BACK/gone.jpg'
    with open(tmp_path / 'infos.pkl', 'wb') as f:
        pickle.dump(data, f)
    with pytest.raises(FileNotFoundError, match='CAM_BACK.*gone.jpg'):
        tool.visualize(str(root), str(tmp_path / 'infos.pkl'), index=0, out=str(tmp_path / 'x.png'))
    with pytest.raises(FileNotFoundError, match='info file nope.pkl not found'):
        tool.load_dataset(str(root), 'nope.pkl')
    # the CLI prints the message and exits with 2
    assert tool.main(['--data-root', str(root), '--ann-file', 'nuscenes_infos_val.pkl', '--index', '99']) == 2
    assert 'index 99 out of range' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(['--data-root', 'x', '--ann-file', 'y', '--index', '0', '--token', 't'])
