"""tools/analysis/compare_sweeps.py: camera_ablation.py CSVs of two models side by side; means, stds
and drops against hand-computed values, one PNG per metric, clear errors for bad entries."""
import math

import pytest

from tool_loader import load_tool

compare = load_tool('analysis/compare_sweeps')
ablation = load_tool('camera_ablation')


def write(folder, sweep, runs):
    """runs: [(severity, seed, NDS, mAP)] -> <folder>/<sweep>.csv as camera_ablation.py writes it."""
    folder.mkdir(exist_ok=True)
    rows = [dict(sweep=sweep, severity=s, seed=seed, NDS=nds, mAP=m, mATE=0.5, mASE=0.3, mAOE=0.4, mAVE=1.0,
                 mAAE=0.2, perturbation='', data_root='') for s, seed, nds, m in runs]
    ablation.add_relative_drops(rows)
    ablation.write_csv(rows, str(folder / f'{sweep}.csv'))
    return folder


def test_two_models_side_by_side(tmp_path, capsys):
    a = write(tmp_path / 'a', 'rot_noise', [('clean', 0, 0.40, 0.20), (1.0, 0, 0.30, 0.10), (1.0, 1, 0.20, 0.10)])
    write(a, 'drop_camera', [('clean', 0, 0.40, 0.20), ('CAM_FRONT', 0, 0.36, 0.15)])
    b = write(tmp_path / 'b', 'rot_noise', [('clean', 0, 0.20, 0.10), (1.0, 0, 0.19, 0.09), (1.0, 1, 0.17, 0.07)])
    paths = compare.main([f'tokens={a}', f'learned={b}', '--out', str(tmp_path / 'out'), '--name', 'cmp'])
    md = (tmp_path / 'out' / 'cmp.md').read_text()
    # tokens rot_noise 1.0: NDS 0.25 ± std(0.3, 0.2) = 0.0707; drops 25 % and 50 % -> 37.5 ± 17.7
    # learned: NDS 0.18 ± 0.0141; drops 5 % and 15 % -> 10.0 ± 7.1
    assert '| severity (rotation noise std (deg)) | tokens NDS | tokens NDS drop | tokens mAP | tokens mAP drop |' in md
    row = next(line for line in md.splitlines() if line.startswith('| 1 |'))
    assert row.startswith('| 1 | 0.2500 ± 0.0707 | +37.5% ± 17.7 | 0.1000 ± 0.0000 | +50.0% ± 0.0 | '
                          '0.1800 ± 0.0141 | +10.0% ± 7.1 | 0.0800 ± 0.0141 | +20.0% ± 14.1 |')
    assert '| clean | 0.4000 | - | 0.2000 | - | 0.2000 | - | 0.1000 | - |' in md
    # a sweep only one model has: its table shows that model only
    drop = md[md.index('### drop_camera'):]
    assert '| CAM_FRONT | 0.3600 | +10.0% | 0.1500 | +25.0% |\n' in drop and 'learned' not in drop
    assert md.index('### rot_noise') < md.index('### drop_camera')  # camera_ablation.py's sweep order
    for m in ('NDS', 'mAP'):
        png = open(paths[m], 'rb').read()
        assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
    stats = compare.summarise(compare.read_sweep(str(a / 'rot_noise.csv')))
    assert stats['1']['NDS_rel_drop_pct_std'] == pytest.approx(math.sqrt(2 * 12.5 ** 2))
    assert 'written:' in capsys.readouterr().out


def test_several_trained_runs_per_model_are_pooled(tmp_path):
    """LABEL=DIR1,DIR2: the runs of both folders pooled, each drop against its own folder's clean run."""
    s0 = write(tmp_path / 's0', 'pitch', [('clean', 0, 0.40, 0.20), (2.0, 0, 0.30, 0.10)])  # drops 25 %, 50 %
    s1 = write(tmp_path / 's1', 'pitch', [('clean', 0, 0.20, 0.10), (2.0, 0, 0.19, 0.09)])  # drops 5 %, 10 %
    compare.main([f'tokens={s0},{s1}', '--out', str(tmp_path / 'out'), '--name', 'cmp'])
    md = (tmp_path / 'out' / 'cmp.md').read_text()
    # clean NDS 0.3 ± std(0.4, 0.2); at 2: NDS 0.245 ± std(0.3, 0.19), NDS drop 15 ± std(25, 5) = 14.1
    assert '| clean | 0.3000 ± 0.1414 | - | 0.1500 ± 0.0707 | - |' in md
    assert '| 2 | 0.2450 ± 0.0778 | +15.0% ± 14.1 | 0.0950 ± 0.0071 | +30.0% ± 28.3 |' in md
    write(s0, 'height', [('clean', 0, 0.40, 0.20), (0.2, 0, 0.30, 0.10)])
    with pytest.raises(FileNotFoundError, match=r"tokens: \[.*s1/height.csv'\] missing"):
        compare.main([f'tokens={s0},{s1}', '--out', str(tmp_path / 'out')])
    with pytest.raises(ValueError, match='a folder is repeated'):
        compare.main([f'tokens={s0},{s0}', '--out', str(tmp_path / 'out')])
    with pytest.raises(ValueError, match='expected LABEL=DIR or LABEL=DIR1,DIR2'):
        compare.main([f'tokens={s0},', '--out', str(tmp_path / 'out')])


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected LABEL=DIR"):
        compare.main(['just_a_dir', '--out', str(tmp_path / 'o')])
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        compare.main([f'x={tmp_path / "nowhere"}', '--out', str(tmp_path / 'o')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'no <sweep>.csv of focal_consistent'):
        compare.main([f'x={tmp_path / "empty"}', '--out', str(tmp_path / 'o')])
    folder = tmp_path / 'noclean'
    folder.mkdir()
    (folder / 'pitch.csv').write_text('sweep,severity,seed,NDS,mAP,mATE,mASE,mAOE,mAVE,mAAE,NDS_rel_drop_pct,'
                                      'mAP_rel_drop_pct\npitch,1,0,0.3,0.1,1,1,1,1,1,,\n')
    with pytest.raises(ValueError, match='no clean run'):
        compare.main([f'x={folder}', '--out', str(tmp_path / 'o')])
    with pytest.raises(ValueError, match='repeated labels'):
        compare.main([f'x={folder}', f'x={folder}', '--out', str(tmp_path / 'o')])
    (tmp_path / 'odd').mkdir()
    (tmp_path / 'odd' / 'height.csv').write_text('a,b\n1,2\n')
    with pytest.raises(ValueError, match='expected a camera_ablation.py CSV'):
        compare.main([f'x={tmp_path / "odd"}', '--out', str(tmp_path / 'o')])
