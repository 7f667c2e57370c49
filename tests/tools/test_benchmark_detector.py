"""tools/analysis/benchmark_detector.py: the synthetic batch (nuScenes rig against a numpy reference,
GT in range), the measuring function on the tiny demo detector (fp32 and bf16), rounds and ratios,
the markdown table, the CLI end to end (fresh worker process, JSON), and clear errors on bad input.
No timing is asserted beyond 'finite and positive'."""
import json
import math

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from sf3d.datasets.synthetic_nuscenes import CAMERAS, NUSCENES_RIG
from tool_loader import TOOLS, load_tool

bench = load_tool('analysis/benchmark_detector')

CONFIGS = TOOLS.parent / 'configs'
TINY = str(CONFIGS / 'synthetic/nuscenes_tiny.py')
SHAPE = (64, 128)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


@pytest.mark.parametrize('shape, scale, top, valid_h', [((448, 800), 0.5, 2.0, 448.0), ((928, 1600), 1.0, 0.0, 900.0),
                                                        (SHAPE, 0.08, 8.0, 64.0)])
def test_cameras_are_the_nuscenes_rig_resized_and_cropped(shape, scale, top, valid_h):
    cams = bench.nuscenes_cameras(shape, batch=2)
    assert tuple(cams.batch_shape) == (2,) and cams.num_cams == 6 and cams.dtype == torch.float32
    lidar_t, lidar_q, _ = NUSCENES_RIG['LIDAR_TOP']
    lidar_r = Quaternion(lidar_q).rotation_matrix
    for n, name in enumerate(CAMERAS):
        t, q, (f, cx, cy) = NUSCENES_RIG[name]
        expected_k = np.array([[f * scale, 0, cx * scale], [0, f * scale, cy * scale - top], [0, 0, 1]])
        np.testing.assert_allclose(cams.cam2img[1, n].numpy(), expected_k, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(cams.image_size[0, n].numpy(), [valid_h, shape[1]])
        # camera centre in the LiDAR frame (ego frame shared: static rig)
        centre = lidar_r.T @ (np.asarray(t) - np.asarray(lidar_t))
        np.testing.assert_allclose(cams.camera_centers[0, n].numpy(), centre, atol=1e-4)
        # optical axis (camera +z) in the LiDAR frame
        axis = lidar_r.T @ Quaternion(q).rotation_matrix @ np.array([0, 0, 1.0])
        l2c = cams.lidar2cam[0, n].double().numpy()
        np.testing.assert_allclose(l2c[:3, :3].T @ np.array([0, 0, 1.0]), axis, atol=1e-5)


def test_random_gt_in_range_with_class_sizes():
    boxes, labels = bench.random_gt(30, torch.Generator().manual_seed(3))
    t = boxes.tensor
    assert t.shape == (30, 9) and labels.shape == (30,) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < 10
    assert (t[:, :2].abs() <= 50).all() and (t[:, 3:6] > 0).all() and (t[:, 6].abs() <= math.pi).all()
    cones = labels == 8  # traffic_cone: 0.40 x 0.40 x 1.06, static
    assert torch.allclose(t[cones, 3:6], torch.tensor([0.40, 0.40, 1.06]).expand(int(cones.sum()), 3))
    assert (t[cones, 7:] == 0).all()


def test_synthetic_batch_matches_the_collate_format():
    inputs, samples = bench.synthetic_batch(SHAPE, batch=2, num_boxes=5, device='cpu')
    assert inputs['img'].shape == (2, 6, 3, *SHAPE)
    assert [b.tensor.shape for b in samples['gt_bboxes_3d']] == [(5, 9)] * 2
    assert samples['pad_shape'] == [SHAPE] * 2 and len(samples['token']) == 2


LEARNED = {'model.query_mode': 'learned', 'model.num_queries': 60, 'model.conditioning': 'none',
           'model.token_loss': None, 'model.depth_bins': 1, 'model.token_offsets': False,
           'model.num_select': None}  # the DETR3D baseline mode


@pytest.mark.parametrize('amp, cfg_options', [(False, None), (True, LEARNED)], ids=['fp32', 'bf16_learned_queries'])
def test_measure_on_the_tiny_detector(amp, cfg_options, one_thread):
    lines = []
    r = bench.measure(TINY, SHAPE, amp=amp, warmup=0, iters=1, threads=one_thread, num_boxes=10,
                      cfg_options=cfg_options, log=lines.append)
    for key in ('params_m', 'trainable_params_m', 'train_s', 'infer_s'):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    # The peak RSS growth over the RSS before the steps: a tiny step can reuse memory the allocator
    # already holds, so it may be 0, or a few pages below (the kernel's RSS counters are approximate;
    # test_bench_utils.py checks the measurement against allocations of known size).
    assert math.isfinite(r['peak_mem_mib'])
    assert math.isfinite(r['loss'])
    assert r['config'] == 'nuscenes_tiny' and r['shape'] == '64x128' and r['amp'] is amp
    assert r['mem'] == 'rss_growth' and r['torch_threads'] == 1
    assert r['train_s'] == r['train_times_s'][0] and len(r['infer_times_s']) == 1
    model = bench.build_detector(TINY, cfg_options)  # independent count over the built module
    assert model.query_mode == ('learned' if cfg_options else 'spatial_tokens')
    assert r['params_m'] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert [line.split(':')[0] for line in lines] == ['nuscenes_tiny train step 1/1', 'nuscenes_tiny infer step 1/1']


def test_measure_bf16_spatial_token_detector(one_thread):
    res = bench.measure(TINY, SHAPE, amp=True, warmup=0, iters=1, threads=one_thread, num_boxes=10)
    assert res['train_s'] > 0 and res['infer_s'] > 0


def _row(config, train, infer, mem=100.0):
    return dict(config=config, shape='448x800', device='cpu', amp=False, batch=1, clock='wall', torch_threads=2,
                params_m=1.0, train_s=train, infer_s=infer, train_times_s=[train], infer_times_s=[infer],
                peak_mem_mib=mem, mem='rss_growth')


def test_rounds_merge_to_the_median_and_ratios_divide_by_the_first():
    merged = bench.merge_rounds([_row('sf_s', 3.0, 1.0, 50), _row('sf_s', 1.0, 5.0, 80), _row('sf_s', 2.0, 2.0, 60)])
    assert merged['train_s'] == 2.0 and merged['infer_s'] == 2.0 and merged['peak_mem_mib'] == 80
    assert merged['train_s_rounds'] == [3.0, 1.0, 2.0] and len(merged['train_times_s']) == 3
    failed = bench.merge_rounds([_row('x', 1.0, 1.0), dict(config='x', error='boom')])
    assert failed['error'] == 'boom'

    rows = bench.add_ratios([dict(config='bad', error='worker exited 1: oops'), _row('sf_s', 2.0, 1.0),
                             _row('detr3d_r50', 4.0, 0.5)])
    assert rows[2]['train_ratio'] == 2.0 and rows[2]['infer_ratio'] == 0.5 and rows[1]['train_ratio'] == 1.0
    table = bench.markdown_table(rows)
    body = [line for line in table.splitlines() if line.startswith('| ') and not line.startswith('| config')]
    assert [line.split(' | ')[0] for line in body] == ['| bad', '| sf_s', '| detr3d_r50']
    assert 'vs sf_s' in table and 'peak RSS growth' in table and 'oops' in table
    assert body[2].split(' | ')[4] == '2.00'


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    bench.main(['--configs', TINY, '--shape', '64', '128', '--warmup', '0', '--iters', '1', '--threads', '1',
                '--num-boxes', '5', '--json', str(out)])
    captured = capsys.readouterr()
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and 'error' not in rows[0], rows
    assert rows[0]['train_ratio'] == 1.0 and rows[0]['train_s'] > 0
    assert '| nuscenes_tiny | 64x128 |' in captured.out
    assert 'nuscenes_tiny train step 1/1' in captured.err  # the worker's progress, relayed


@pytest.mark.parametrize('argv, message', [
    (['--shape', '450', '800'], 'multiples of 32'),
    (['--shape', '448', '0'], 'multiples of 32'),
    (['--configs', str(CONFIGS / 'nuscenes/nope.py')], 'not found'),
    (['--iters', '0'], '--iters must be >= 1'),
    (['--device', 'cuda', '--clock', 'cpu'], 'wall clock'),
])
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


def test_measure_rejects_bad_input():
    with pytest.raises(ValueError, match='450x800.*multiples of 32'):
        bench.measure(TINY, (450, 800))
    with pytest.raises(ValueError, match='iters >= 1'):
        bench.measure(TINY, SHAPE, iters=0)
    with pytest.raises(ValueError, match='not a MultiViewDetector'):
        bench.build_detector(str(CONFIGS / 'synthetic/imagenet_tiny.py'))
