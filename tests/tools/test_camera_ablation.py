"""tools/camera_ablation.py: a tiny, briefly trained detector (tiny_detector.trained_checkpoint, not the
Runner's own initialisation) swept end to end on the synthetic nuScenes fixture (clean run + 2
severities; the config points at a missing dataroot and --data-root swaps in the fixture); the clean
run's metrics equal the checkpoint model's scored independently (and differ from the Runner's initial
model's), CSV / markdown / PNG written, the perturbation really applied to every test
sample of the perturbed runs only; relative drops and mean +- std against hand-computed values;
pipeline insertion, run planning and clear errors for bad sweeps / severities / roots."""
import csv
import math

import numpy as np
import pytest

from sf3d.datasets import synthetic_nuscenes
from sf3d.datasets.nuscenes_info import create_nuscenes_infos
from sf3d.datasets.transforms import perturb
from tiny_detector import (checkpoint_state, predict, reference_metric, runner_initial_state, tiny_detector_config,
                           trained_checkpoint)
from tool_loader import load_tool

MISSING_ROOT = '/nonexistent/sf3d_nuscenes/'

tool = load_tool('camera_ablation')


@pytest.fixture(scope='module')
def config_and_ckpt(nuscenes_root, tmp_path_factory):
    """The demo detector config shrunk to a tiny model whose test data root does not exist (the tool's
    --data-root supplies it), and a checkpoint of it trained a few steps on the fixture's train split."""
    out = tmp_path_factory.mktemp('camera_ablation_cfg')
    cfg = tiny_detector_config({'test_dataloader.dataset.data_root': MISSING_ROOT,
                                'test_evaluator.data_root': MISSING_ROOT, 'default_hooks.logger.interval': 1})
    cfg_path = out / 'tiny_ablation.py'
    cfg.dump(str(cfg_path))
    return cfg_path, trained_checkpoint(cfg, out / 'trained.pth', nuscenes_root)


@pytest.fixture(scope='module')
def clean_references(config_and_ckpt, nuscenes_root, tmp_path_factory):
    """NDS, mAP and TP errors on the fixture's val split of (the checkpoint's model, the model the Runner
    builds before loading it), each run directly and scored by a NuScenesMetric of our own."""
    out = tmp_path_factory.mktemp('camera_ablation_refs')
    cfg = tiny_detector_config({'test_dataloader.dataset.data_root': str(nuscenes_root),
                                'test_evaluator.data_root': str(nuscenes_root)})
    refs = []
    for name, state in (('ckpt', checkpoint_state(config_and_ckpt[1])), ('init', runner_initial_state(cfg, out))):
        metrics, _ = reference_metric(cfg, predict(cfg, state), out / name)
        refs.append({m: metrics[f'NuScenes/{m}'] for m in tool.METRICS})
    assert refs[0]['NDS'] != pytest.approx(refs[1]['NDS'], rel=1e-3)
    return refs


def _assert_clean_run_is_the_checkpoint(row, clean_references):
    checkpoint, initial = clean_references
    assert {m: row[m] for m in tool.METRICS} == pytest.approx(checkpoint, rel=1e-6, abs=1e-9)
    assert row['NDS'] != pytest.approx(initial['NDS'], rel=1e-3)


def test_focal_sweep_end_to_end(config_and_ckpt, clean_references, nuscenes_root, tmp_path, monkeypatch):
    cfg_path, ckpt = config_and_ckpt
    calls = []
    original = perturb.FocalScale.__call__

    def spy(self, results):
        calls.append((self.scale, self.mode, results['token']))
        return original(self, results)
    monkeypatch.setattr(perturb.FocalScale, '__call__', spy)
    out = tmp_path / 'out'
    result = tool.main([str(cfg_path), str(ckpt), '--sweep', 'focal_consistent', '--severities', '0.9', '1.1',
                        '--seeds', '1', '--data-root', str(nuscenes_root), '--out', str(out), '--no-progress',
                        '--work-dir', str(tmp_path / 'work')])
    # every val sample (2 mini_val scenes x 2) went through the perturbation in each perturbed run, and
    # only there; the config's missing root was replaced
    tokens = sorted({t for _, _, t in calls})
    assert len(tokens) == 4
    assert sorted(calls) == sorted((s, 'consistent', t) for s in (0.9, 1.1) for t in tokens)
    with open(out / 'focal_consistent.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['severity'] for r in rows] == ['clean', '0.9', '1.1'] and {r['seed'] for r in rows} == {'0'}
    assert rows[0]['perturbation'] == '' and '"scale": 0.9' in rows[1]['perturbation']
    clean_nds = float(rows[0]['NDS'])
    _assert_clean_run_is_the_checkpoint(result['rows'][0], clean_references)
    for row, run in zip(rows, result['rows']):
        for m in tool.METRICS:  # NDS, mAP in [0, 1]; TP errors >= 0 (metres, radians, m/s can exceed 1)
            assert 0.0 <= float(row[m]) <= (1.0 if m in ('NDS', 'mAP') else np.inf)
            assert float(row[m]) == pytest.approx(run[m], rel=1e-5)
        for m in tool.DROP_METRICS:  # relative drop against the clean run, empty when clean is 0
            clean = float(rows[0][m])
            expect = '' if clean == 0 else pytest.approx(100 * (clean - float(row[m])) / clean, rel=1e-4, abs=1e-6)
            got = row[f'{m}_rel_drop_pct']
            assert (got if expect == '' else float(got)) == expect
    md = (out / 'focal_consistent.md').read_text()
    assert '| severity (focal scale) | runs | NDS | NDS drop | mAP | mAP drop | mATE |' in md
    assert f'| clean | 1 | {clean_nds:.4f} | - |' in md and '| 0.9 | 1 |' in md and '| 1.1 | 1 |' in md
    assert f'data_root: `{nuscenes_root}`' in md
    png = (out / 'focal_consistent.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000


def test_random_sweep_runs_every_seed(config_and_ckpt, nuscenes_root, tmp_path, monkeypatch):
    cfg_path, ckpt = config_and_ckpt
    black = []
    original = perturb.CameraDropout.__call__

    def spy(self, results):
        out = original(self, results)
        black.append((self.seed, results['token'], sum(not img.any() for img in out['img'])))
        return out
    monkeypatch.setattr(perturb.CameraDropout, '__call__', spy)
    result = tool.main([str(cfg_path), str(ckpt), '--sweep', 'cam_crash', '--severities', '5', '--seeds', '2',
                        '--data-root', str(nuscenes_root), '--out', str(tmp_path / 'out'), '--no-progress',
                        '--work-dir', str(tmp_path / 'work')])
    assert sorted({(seed, n) for seed, _, n in black}) == [(0, 5), (1, 5)] and len(black) == 8
    assert [(r['severity'], r['seed']) for r in result['rows']] == [('clean', 0), (5, 0), (5, 1)]
    assert [(e['severity'], e['runs']) for e in result['summary']] == [('clean', 1), (5, 2)]
    nds = [r['NDS'] for r in result['rows'][1:]]
    assert result['summary'][1]['NDS'] == pytest.approx(np.mean(nds))
    assert f"{np.mean(nds):.4f} ± {np.std(nds, ddof=1):.4f}" in (tmp_path / 'out' / 'cam_crash.md').read_text()


def test_several_sweeps_share_one_clean_run(config_and_ckpt, clean_references, nuscenes_root, tmp_path,
                                            monkeypatch):
    """Two sweeps in one call: the clean evaluation runs once (3 test loops, not 4), each sweep's files hold
    that clean row and its own runs, and each perturbed run equals the same run of a one-sweep call."""
    cfg_path, ckpt = config_and_ckpt
    loops = []
    original = tool.Runner.test

    def counted(self):
        loops.append(1)
        return original(self)
    monkeypatch.setattr(tool.Runner, 'test', counted)
    common = [str(cfg_path), str(ckpt), '--data-root', str(nuscenes_root), '--no-progress']
    result = tool.main(common + ['--sweep', 'focal_calib', 'principal_point', '--severities', 'focal_calib=0.9',
                                 'principal_point=10', '--out', str(tmp_path / 'both'),
                                 '--work-dir', str(tmp_path / 'work_both')])
    assert len(loops) == 3 and sorted(result['sweeps']) == ['focal_calib', 'principal_point']
    assert 'rows' not in result  # several sweeps: per sweep only
    for name, severity in (('focal_calib', 0.9), ('principal_point', 10.0)):
        rows = result['sweeps'][name]['rows']
        assert [(r['sweep'], r['severity']) for r in rows] == [(name, 'clean'), (name, severity)]
        _assert_clean_run_is_the_checkpoint(rows[0], clean_references)
        with open(tmp_path / 'both' / f'{name}.csv') as f:
            assert [r['severity'] for r in csv.DictReader(f)] == ['clean', f'{severity:g}']
    single = tool.main(common + ['--sweep', 'principal_point', '--severities', '10', '--out', str(tmp_path / 'one'),
                                 '--work-dir', str(tmp_path / 'work_one')])
    both = result['sweeps']['principal_point']['rows'][1]
    assert {m: both[m] for m in tool.METRICS} == pytest.approx({m: single['rows'][1][m] for m in tool.METRICS},
                                                              rel=1e-6)
    assert both['NDS'] != pytest.approx(result['sweeps']['focal_calib']['rows'][1]['NDS'], rel=1e-4)


@pytest.mark.parametrize('texts, match', [
    (['0.9'], r"with several sweeps \(focal_calib, pitch\) each entry must be NAME=V1,V2"),
    (['height=0.1'], 'must be NAME=V1,V2,... for one of them'),
    (['pitch=1', 'pitch=2'], "sweep 'pitch' is given twice"),
    (['pitch=1,x'], r"--severities for pitch: 'x' is not a number"),
])
def test_bad_multi_sweep_severities_are_clear_errors(texts, match):
    with pytest.raises(ValueError, match=match):
        tool.parse_sweep_severities(['focal_calib', 'pitch'], texts)


def test_multi_sweep_severities_default_and_repeats():
    plan = tool.parse_sweep_severities(['focal_calib', 'pitch'], ['pitch=1,2'])
    assert plan == {'focal_calib': [0.8, 0.9, 1.1, 1.2], 'pitch': [1.0, 2.0]}
    with pytest.raises(ValueError, match=r"repeated sweeps in \['pitch', 'pitch'\]"):
        tool.parse_sweep_severities(['pitch', 'pitch'], None)
    with pytest.raises(ValueError, match="unknown sweep 'zoom'"):
        tool.parse_sweep_severities(['pitch', 'zoom'], None)


def test_relative_drop_and_summary_hand_computed():
    metrics = dict(mATE=0.5, mASE=0.5, mAOE=0.5, mAVE=0.5, mAAE=0.5)
    rows = [dict(severity='clean', seed=0, NDS=0.40, mAP=0.20, **metrics),
            dict(severity=2, seed=0, NDS=0.30, mAP=0.10, **metrics),
            dict(severity=2, seed=1, NDS=0.20, mAP=0.15, **metrics)]
    tool.add_relative_drops(rows)
    assert rows[0]['NDS_rel_drop_pct'] == 0.0
    assert rows[1]['NDS_rel_drop_pct'] == pytest.approx(25.0) and rows[2]['NDS_rel_drop_pct'] == pytest.approx(50.0)
    assert rows[1]['mAP_rel_drop_pct'] == pytest.approx(50.0) and rows[2]['mAP_rel_drop_pct'] == pytest.approx(25.0)
    summary = tool.summarise(rows)
    assert [(e['severity'], e['runs']) for e in summary] == [('clean', 1), (2, 2)]
    assert summary[1]['NDS'] == pytest.approx(0.25) and summary[1]['NDS_std'] == pytest.approx(np.std([.3, .2], ddof=1))
    assert summary[1]['NDS_rel_drop_pct'] == pytest.approx(37.5)
    assert summary[0]['NDS_std'] == 0.0
    # a clean NDS of 0 has no relative drop
    zero = [dict(rows[0], NDS=0.0), dict(rows[1])]
    tool.add_relative_drops(zero)
    assert math.isnan(zero[1]['NDS_rel_drop_pct']) and zero[1]['mAP_rel_drop_pct'] == pytest.approx(50.0)


def test_markdown_and_bar_plot_for_named_cameras(tmp_path):
    metrics = dict(mAP=0.2, mATE=0.5, mASE=0.5, mAOE=0.5, mAVE=0.5, mAAE=0.5)
    rows = [dict(severity='clean', seed=0, NDS=0.4, **metrics), dict(severity='CAM_BACK', seed=0, NDS=0.3, **metrics),
            dict(severity='CAM_FRONT+CAM_BACK', seed=0, NDS=0.1, **metrics)]
    tool.add_relative_drops(rows)
    summary = tool.summarise(rows)
    tool.write_markdown(summary, str(tmp_path / 'd.md'), 'drop_camera', dict(config='c.py'))
    md = (tmp_path / 'd.md').read_text()
    assert '| CAM_BACK | 1 | 0.3000 | 25.0% | 0.2000 | 0.0% |' in md
    assert '| CAM_FRONT+CAM_BACK | 1 | 0.1000 | 75.0% |' in md
    tool.write_plot(summary, str(tmp_path / 'd.png'), 'drop_camera')
    assert (tmp_path / 'd.png').read_bytes()[:4] == b'\x89PNG'


def test_pipeline_insertion():
    base = [dict(type='LoadMultiViewImages'), dict(type='PadMultiViewImage', size_divisor=32),
            dict(type='Pack3DDetInputs', keys=('img',))]
    p = dict(type='FocalScale', scale=0.9)
    assert [t['type'] for t in tool.insert_perturbation(base, p)] == [
        'LoadMultiViewImages', 'FocalScale', 'PadMultiViewImage', 'Pack3DDetInputs']
    tiny = [dict(type='LoadMultiViewImages'), dict(type='ResizeCropFlipMultiView', final_size=(8, 8)),
            dict(type='sf3d.Pack3DDetInputs')]
    assert [t['type'] for t in tool.insert_perturbation(tiny, p)][2] == 'FocalScale'
    assert len(base) == 3  # the input is not modified
    with pytest.raises(ValueError, match='expected LoadMultiViewImages followed'):
        tool.insert_perturbation([dict(type='Pack3DDetInputs')], p)


def test_run_plan_and_severity_parsing():
    assert tool.plan_runs('focal_calib', [0.9, 1.1], seeds=3) == [
        ('clean', 0, None, None), (0.9, 0, dict(type='FocalScale', scale=0.9, mode='calib'), None),
        (1.1, 0, dict(type='FocalScale', scale=1.1, mode='calib'), None)]
    crash = tool.plan_runs('cam_crash', [2], seeds=2)
    assert [(s, seed) for s, seed, _, _ in crash] == [('clean', 0), (2, 0), (2, 1)]
    assert crash[2][2] == dict(type='CameraDropout', mode='crash', severity=2, seed=1)
    assert tool.parse_severities('frame_lost', None) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert tool.parse_severities('cam_crash', None) == [2, 4, 5]
    assert tool.parse_severities('drop_camera', ['CAM_BACK', 'CAM_FRONT+CAM_BACK_LEFT']) == [
        'CAM_BACK', 'CAM_FRONT+CAM_BACK_LEFT']
    assert tool.parse_severities('principal_point', ['5', '40']) == [5.0, 40.0]


@pytest.mark.parametrize('sweep, severities, match', [
    ('focal_consistent', ['zoom'], r"'zoom' is not a number"),
    ('focal_calib', ['-0.5'], 'severity -0.5 is invalid: FocalScale: scale must be a finite number > 0'),
    ('cam_crash', ['2.5'], r"'2.5' is not an integer"),
    ('frame_lost', ['7'], r'severity 7.0 is invalid: .*severity in \[0, 6\]'),
    ('drop_camera', ['CAM_TOP'], r"unknown camera\(s\) \['CAM_TOP'\]"),
    ('height', ['0.1', '0.1'], 'repeated values'),
])
def test_bad_severities_are_clear_errors(sweep, severities, match):
    with pytest.raises(ValueError, match=match):
        tool.parse_severities(sweep, severities)


def test_bad_sweep_and_roots_are_clear_errors(config_and_ckpt, nuscenes_root, tmp_path):
    cfg_path, ckpt = config_and_ckpt
    common = [str(cfg_path), str(ckpt), '--out', str(tmp_path / 'out')]
    with pytest.raises(ValueError, match=r"unknown sweep 'zoom'; choose one of focal_consistent, focal_calib"):
        tool.main(common + ['--sweep', 'zoom'])
    with pytest.raises(ValueError, match='--seeds must be >= 1'):
        tool.main(common + ['--sweep', 'rot_noise', '--seeds', '0'])
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        tool.main(common + ['--sweep', 'height', '--data-root', str(tmp_path / 'nowhere')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'nuscenes_infos_val.pkl does not exist; write it with'):
        tool.main(common + ['--sweep', 'height', '--data-root', str(tmp_path / 'empty')])
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        tool.main([str(cfg_path), str(tmp_path / 'none.pth'), '--out', str(tmp_path / 'o'), '--sweep', 'pitch'])
    assert not (tmp_path / 'out').exists()


def _write_rig(root, **values):
    root.mkdir()
    (root / synthetic_nuscenes.RIG_FILE).write_text(
        __import__('json').dumps(dict(dict(focal=1.0, height=0.0, pitch=0.0), **values)))
    return str(root)


def test_rig_plan_undoes_and_applies_the_recorded_rig(tmp_path):
    focal = _write_rig(tmp_path / 'f', focal=1.25)
    mount = _write_rig(tmp_path / 'm', height=0.2, pitch=-2.0)
    runs = tool.plan_runs('rig', tool.parse_severities('rig', [focal, mount]), seeds=3)
    assert runs == [
        ('clean', 0, None, None),
        ('focal=1.25: calibrated', 0, None, focal),
        ('focal=1.25: old calibration', 0, [dict(type='FocalScale', scale=0.8, mode='calib')], focal),
        ('focal=1.25: calibration error', 0, [dict(type='FocalScale', scale=1.25, mode='calib')], None),
        ('height=0.2,pitch=-2: calibrated', 0, None, mount),
        ('height=0.2,pitch=-2: old calibration', 0,
         [dict(type='CameraHeightPitchOffset', height_m=-0.2, pitch_deg=2.0)], mount),
        ('height=0.2,pitch=-2: calibration error', 0,
         [dict(type='CameraHeightPitchOffset', height_m=0.2, pitch_deg=-2.0)], None)]
    same = _write_rig(tmp_path / 'again', focal=1.25)
    with pytest.raises(ValueError, match='were rendered through the same rig'):
        tool.plan_runs('rig', [focal, same], seeds=1)
    with pytest.raises(ValueError, match='give the re-rendered dataroots'):
        tool.parse_severities('rig', None)
    rolled = _write_rig(tmp_path / 'roll', roll=1.0)
    with pytest.raises(ValueError, match='a rig with roll .* has no calibration-error counterpart'):
        tool.plan_runs('rig', [rolled], seeds=1)
    with pytest.raises(FileNotFoundError, match='rig.json does not exist'):
        tool.parse_severities('rig', [str(tmp_path)])
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'rig.json').write_text('{"focal": "wide"}')
    with pytest.raises(ValueError, match='expected numbers under'):
        tool.parse_severities('rig', [str(tmp_path / 'bad')])


def test_rig_sweep_end_to_end(config_and_ckpt, nuscenes_root, tmp_path, monkeypatch):
    """A re-rendered fixture (same scenes, pitched and raised rig): the calibrated run reads its images and
    calibration; 'old calibration' on it equals the base cameras (the undo is exact); 'calibration error'
    on the base images equals the rig's cameras."""
    rig = synthetic_nuscenes.parse_rig('height=0.3,pitch=3')
    rig_root = tmp_path / 'rig'
    synthetic_nuscenes.generate(str(rig_root), samples_per_scene=2, rig=rig, progress=False)
    create_nuscenes_infos(str(rig_root), 'v1.0-mini', str(rig_root), progress=False)
    assert synthetic_nuscenes.read_rig(str(rig_root)) == rig
    assert synthetic_nuscenes.read_rig(str(nuscenes_root)) == synthetic_nuscenes.RigSpec()
    seen = {}  # (data root of the image, perturbed?) -> {token: lidar2cam after the perturbations}
    original = tool.insert_perturbation

    def tagged(pipeline, perturbation):  # the spy right after the perturbations
        return original(pipeline, [perturbation] if isinstance(perturbation, dict) else
                        list(perturbation) + [dict(type='_Spy')])
    monkeypatch.setattr(tool, 'insert_perturbation', tagged)

    class Spy:
        def __call__(self, results):
            root = str(rig_root) if str(rig_root) in results['images']['CAM_FRONT']['img_path'] else 'base'
            seen.setdefault(root, {})[results['token']] = results['cameras'].lidar2cam.clone()
            return results
    from sf3d.registry import TRANSFORMS
    TRANSFORMS.register_module(name='_Spy', module=Spy, force=True)
    base_cams, rig_cams = {}, {}
    for root, store in ((nuscenes_root, base_cams), (rig_root, rig_cams)):
        from sf3d.datasets import NuScenesMultiViewDataset
        ds = NuScenesMultiViewDataset(data_root=str(root), ann_file='nuscenes_infos_val.pkl',
                                      pipeline=[dict(type='LoadMultiViewImages')])
        for i in range(len(ds)):
            item = ds[i]
            store[item['token']] = item['cameras'].lidar2cam
    result = tool.main([str(cfg_path) for cfg_path in config_and_ckpt] + [
        '--sweep', 'rig', '--severities', str(rig_root), '--data-root', str(nuscenes_root),
        '--out', str(tmp_path / 'out'), '--no-progress', '--work-dir', str(tmp_path / 'work')])
    labels = [r['severity'] for r in result['rows']]
    assert labels == ['clean', 'height=0.3,pitch=3: calibrated', 'height=0.3,pitch=3: old calibration',
                      'height=0.3,pitch=3: calibration error']
    assert [r['data_root'] for r in result['rows']] == ['', str(rig_root), str(rig_root), '']
    assert set(seen) == {str(rig_root), 'base'} and len(seen['base']) == len(seen[str(rig_root)]) == 4
    for token, l2c in seen[str(rig_root)].items():  # the old calibration on the rig's images: the base rig
        np.testing.assert_allclose(l2c, base_cams[token], atol=1e-9)
    for token, l2c in seen['base'].items():  # the rig's calibration on the base images
        np.testing.assert_allclose(l2c, rig_cams[token], atol=1e-9)
    assert not np.allclose(rig_cams[token], base_cams[token], atol=1e-3)
    with open(tmp_path / 'out' / 'rig.csv') as f:
        assert [r['data_root'] for r in csv.DictReader(f)] == ['', str(rig_root), str(rig_root), '']
