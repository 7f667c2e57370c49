"""tools/analysis/nds_oracle.py on the synthetic nuScenes fixture: a submission made from the ground truth
and then damaged in one attribute (yaw turned by 180 degrees, velocity zeroed, size doubled) scores what
the devkit says, and the matching oracle restores exactly that error; pairing, oracles and errors
against hand-made cases."""
import contextlib
import io
import json
import math

import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import load_gt
from nuscenes.eval.detection.data_classes import DetectionBox

from sf3d.evaluation.nuscenes_metric import assign_attribute
from tool_loader import load_tool

tool = load_tool('analysis/nds_oracle')


def _gt_submission(root, damage):
    nusc = NuScenes(version='v1.0-mini', dataroot=str(root), verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = load_gt(nusc, 'mini_val', DetectionBox, verbose=False)
    results = {}
    for token in gt.sample_tokens:
        results[token] = [damage(dict(sample_token=token, translation=list(g.translation), size=list(g.size),
                                      rotation=list(g.rotation), velocity=list(g.velocity),
                                      detection_name=g.detection_name, detection_score=0.9,
                                      attribute_name=g.attribute_name)) for g in gt[token]]
    meta = dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False, use_external=False)
    return dict(meta=meta, results=results)


def _turn(box):  # yaw + 180 degrees (a barrier's orientation error has period 180 degrees: no error)
    box['rotation'] = tool._yaw_quaternion(tool._yaw(box['rotation']) + math.pi)
    return box


def _still(box):
    box['velocity'] = [0.0, 0.0]
    box['attribute_name'] = assign_attribute(box['detection_name'], box['velocity'])
    return box


def _big(box):
    box['size'] = [2 * s for s in box['size']]
    return box


def _score(rows, variant):
    return next(r for r in rows if r['variant'] == variant)


@pytest.mark.parametrize('damage, oracle, error', [(_turn, 'orientation_flip', 'mAOE'), (_still, 'velocity', 'mAVE'),
                                                   (_big, 'size', 'mASE')])
def test_oracle_restores_the_damaged_attribute(nuscenes_root, tmp_path, damage, oracle, error):
    path = tmp_path / 'results_nusc.json'
    path.write_text(json.dumps(_gt_submission(nuscenes_root, damage)))
    rows = tool.measure(str(path), str(nuscenes_root), oracles=[oracle, 'translation'], progress=False)
    damaged, fixed = rows[0], _score(rows, oracle)
    assert damaged['variant'] == 'as submitted' and damaged['mAP'] == pytest.approx(1.0)
    assert damaged[error] > 0.3  # the damage is visible to the devkit ...
    assert fixed[error] == pytest.approx(0.0, abs=1e-6)  # ... and the oracle undoes it
    assert fixed['NDS'] > damaged['NDS'] and fixed['dNDS'] == pytest.approx(fixed['NDS'] - damaged['NDS'])
    others = [k for k in ('mATE', 'mASE', 'mAOE', 'mAAE') if k != error and not (error == 'mAVE' and k == 'mAAE')]
    for key in others:  # the other errors stay where they were
        assert fixed[key] == pytest.approx(damaged[key], abs=1e-6)
    # translation is already exact: nothing changes
    assert _score(rows, 'translation')['NDS'] == pytest.approx(damaged['NDS'], abs=1e-9)


def test_zero_velocity_and_unknown_inputs(nuscenes_root, tmp_path):
    path = tmp_path / 'results_nusc.json'
    submission = _gt_submission(nuscenes_root, lambda b: b)
    path.write_text(json.dumps(submission))
    rows = tool.measure(str(path), str(nuscenes_root), oracles=['zero_velocity'], progress=False)
    assert rows[0]['NDS'] == pytest.approx(1.0, abs=1e-6) and rows[1]['mAVE'] > 0.3
    with pytest.raises(ValueError, match=r"--oracles: unknown \['speed'\]"):
        tool.measure(str(path), str(nuscenes_root), oracles=['speed'], progress=False)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        tool.measure(str(tmp_path / 'none.json'), str(nuscenes_root), progress=False)
    token = next(iter(submission['results']))
    del submission['results'][token]
    path.write_text(json.dumps(submission))
    with pytest.raises(ValueError, match=r'has no entry for 1 of the \d+ mini_val samples'):
        tool.measure(str(path), str(nuscenes_root), progress=False)


class _Gt:
    def __init__(self, name, xy, yaw=0.0, velocity=(0.0, 0.0)):
        self.detection_name, self.translation = name, (xy[0], xy[1], 1.0)
        self.rotation, self.velocity, self.size, self.attribute_name = tool._yaw_quaternion(yaw), velocity, (
            2.0, 4.0, 1.5), 'vehicle.moving'


def test_pairing_and_oracles_by_hand():
    gts = [_Gt('car', (10.0, 0.0), yaw=0.3, velocity=(5.0, 0.0)), _Gt('car', (11.5, 0.0)), _Gt('truck', (10.2, 0.0))]
    box = dict(translation=[10.1, 0.0, 1.0], size=[1.0, 1.0, 1.0], rotation=tool._yaw_quaternion(0.3 + 3.0),
               velocity=[0.0, 0.0], detection_name='car', attribute_name='vehicle.parked')
    far = dict(box, translation=[20.0, 0.0, 1.0])
    pairs = tool.pair_with_gt([box, far], gts, radius=2.0)
    assert pairs[0] is gts[0] and pairs[1] is None  # the nearest car, never the (nearer) truck
    flipped = tool.apply_oracle(box, pairs[0], 'orientation_flip')
    assert tool._yaw(flipped['rotation']) == pytest.approx(0.3 + 3.0 - math.pi)
    kept = tool.apply_oracle(dict(box, rotation=tool._yaw_quaternion(0.3 + 1.0)), pairs[0], 'orientation_flip')
    assert tool._yaw(kept['rotation']) == pytest.approx(1.3)  # within 90 degrees: not flipped
    moving = tool.apply_oracle(box, pairs[0], 'velocity')
    assert moving['velocity'] == [5.0, 0.0] and moving['attribute_name'] == 'vehicle.moving'
    assert tool.apply_oracle(far, None, 'velocity') == far and box['velocity'] == [0.0, 0.0]  # copies
    # moving_state: a moving GT keeps the predicted velocity, a still one (0.1 m/s) zeroes it
    noisy = dict(box, velocity=[0.3, 0.4], attribute_name='vehicle.parked')
    kept = tool.apply_oracle(noisy, pairs[0], 'moving_state')
    assert kept['velocity'] == [0.3, 0.4] and kept['attribute_name'] == 'vehicle.moving'
    still = tool.apply_oracle(noisy, _Gt('car', (10.0, 0.0), velocity=(0.1, 0.0)), 'moving_state')
    assert still['velocity'] == [0.0, 0.0] and still['attribute_name'] == 'vehicle.parked'
    with pytest.raises(ValueError, match="unknown oracle 'speed'"):
        tool.apply_oracle(box, pairs[0], 'speed')
