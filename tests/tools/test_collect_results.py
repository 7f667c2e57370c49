"""tools/analysis/collect_results.py on fabricated mmengine work dirs (the layout tools/train.py and
tools/test.py leave: the dumped config, <timestamp>/vis_data/{config.py, scalars.json} and, for a
test run, <timestamp>/<timestamp>.json): best vs last validation, test-only runs, resumed
histories, the CSV, params against a freshly built model, GMACs against a real-tensor count, and
the errors for work dirs without results."""
import csv
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from sf3d.registry import MODELS
from sf3d.utils.flops import count_params_flops
from tool_loader import load_tool

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = REPO / 'configs/synthetic/ablations'

collect_results = load_tool('analysis/collect_results')


def metrics(nds: float) -> dict:
    """A full set of NuScenes metrics, each a distinct function of NDS."""
    return {'NuScenes/NDS': nds, 'NuScenes/mAP': nds / 2, 'NuScenes/mATE': 1 - nds, 'NuScenes/mASE': 0.5 + nds,
            'NuScenes/mAOE': 1.5 - nds, 'NuScenes/mAVE': 2 - nds, 'NuScenes/mAAE': 0.9 - nds,
            'NuScenes/car_AP': nds / 3, 'data_time': 0.1, 'time': 0.3}


def dump_config(work: Path, name: str, **changes) -> str:
    cfg = Config.fromfile(ABLATIONS / f'{name}.py')
    cfg.merge_from_dict(changes)
    work.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(work / f'{name}.py'))
    return cfg.pretty_text


def train_run(work: Path, timestamp: str, config_text: str, val_nds: list, first_epoch: int = 1,
              iters_per_epoch: int = 4) -> None:
    """A training run: train lines every 2 iterations, a validation line after every epoch."""
    vis = work / timestamp / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'config.py').write_text(config_text)
    lines = []
    for k, nds in enumerate(val_nds):
        epoch = first_epoch + k
        for it in range(2, iters_per_epoch + 1, 2):
            step = (epoch - 1) * iters_per_epoch + it
            lines.append(dict(lr=1e-3, loss=5.0 - 0.1 * step, epoch=epoch, iter=step, step=step))
        lines.append(dict(metrics(nds), step=epoch))
    (vis / 'scalars.json').write_text(''.join(json.dumps(line) + '\n' for line in lines))


def tools_test_run(work: Path, timestamp: str, config_text: str, nds: float) -> None:
    """A tools/test.py run: LoggerHook's single JSON object of the test metrics."""
    run = work / timestamp
    (run / 'vis_data').mkdir(parents=True)
    (run / 'vis_data' / 'config.py').write_text(config_text)
    (run / f'{timestamp}.json').write_text(json.dumps(metrics(nds)))


def read_csv(path: Path) -> list:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def check_metrics(row, nds: float) -> None:
    expected = {m: metrics(nds)[f'NuScenes/{m}'] for m in collect_results.METRICS}
    assert {m: float(row[m]) for m in expected} == pytest.approx(expected)


def test_best_and_last_rows_and_csv(tmp_path, capsys):
    a, b = tmp_path / 'a', tmp_path / 'b'
    train_run(a, '20260101_000000', dump_config(a, 'cond_none'), [0.20, 0.35, 0.30])
    train_run(b, '20260101_000000', dump_config(b, 'queries_learned'), [0.10, 0.15])
    out_md, out_csv = tmp_path / 'out' / 'table.md', tmp_path / 'out' / 'table.csv'
    rows = collect_results.main([str(a), str(b), '--no-cost', '--out-md', str(out_md), '--out-csv', str(out_csv)])
    assert [r['config'] for r in rows] == ['cond_none', 'queries_learned']
    check_metrics(rows[0], 0.35)  # the best NDS, not the last
    check_metrics(rows[1], 0.15)
    assert rows[0]['evaluated'] == 'val step 2 (best NDS of 3)'
    assert rows[0]['params_M'] is None and rows[0]['GMACs'] is None

    table = capsys.readouterr().out
    assert out_md.read_text().strip() == table.strip()
    lines = table.splitlines()
    assert lines[0].startswith('| config | NDS | mAP | mATE | mASE | mAOE | mAVE | mAAE | params (M) | GMACs |')
    assert lines[2] == ('| cond_none | 0.3500 | 0.1750 | 0.6500 | 0.8500 | 1.1500 | 1.6500 | 0.5500 | n/a | n/a | '
                        'n/a | val step 2 (best NDS of 3) |')

    with open(out_csv, newline='') as f:
        assert next(csv.reader(f)) == ['config', 'NDS', 'mAP', 'mATE', 'mASE', 'mAOE', 'mAVE', 'mAAE', 'params_M',
                                       'GMACs', 'input', 'evaluated', 'work_dir']
    written = read_csv(out_csv)
    assert [r['config'] for r in written] == ['cond_none', 'queries_learned'] and written[1]['work_dir'] == str(b)
    check_metrics(written[0], 0.35)
    assert written[0]['params_M'] == '' and written[0]['GMACs'] == ''

    last = collect_results.main([str(a), str(b), '--no-cost', '--last'])
    check_metrics(last[0], 0.30)
    check_metrics(last[1], 0.15)
    assert last[0]['evaluated'] == 'val step 3 (last of 3)'


def test_params_and_gmacs_match_the_model(tmp_path):
    work = tmp_path / 'learned'
    train_run(work, '20260101_000000', dump_config(work, 'queries_learned'), [0.1])
    row, = collect_results.main([str(work)])

    cfg = Config.fromfile(work / 'queries_learned.py')
    with DefaultScope.overwrite_default_scope('sf3d'):
        model = MODELS.build(cfg.model).eval()
    model.requires_grad_(False)  # FlopCounterMode's module tracker fails on the learned queries' trainable weight
    assert model.query_embedding.num_embeddings == 6 * 6 * 10  # the ablation's computed query count (= num_select)
    assert row['params_M'] * 1e6 == sum(p.numel() for p in model.parameters())

    # GMACs: a real-tensor count on the same 6-view input, (224, 416) = nuscenes_tiny's final_size
    assert row['input'] == '6x224x416' and collect_results.input_size(cfg, 'val') == (224, 416)
    nuscenes_cameras = load_tool('analysis/benchmark_detector').nuscenes_cameras
    counted = count_params_flops(model, dict(inputs=dict(img=torch.zeros(1, 6, 3, 224, 416)),
                                             data_samples=dict(cameras=nuscenes_cameras((224, 416), 1)),
                                             mode='tensor'))
    assert row['GMACs'] == pytest.approx(counted['flops'] / 2e9, rel=1e-9) and row['GMACs'] > 1.0


def test_input_size_follows_the_pipeline():
    sf_s = Config.fromfile(REPO / 'configs/nuscenes/ablations/grid_5x8.py')
    assert collect_results.input_size(sf_s, 'test') == (928, 1600)  # 1600x900 padded to a multiple of 32
    half = Config.fromfile(REPO / 'configs/nuscenes/sf_s_half.py')
    assert collect_results.input_size(half, 'val') == (448, 800)
    sf_s.test_dataloader.dataset.pipeline[1] = dict(type='PadMultiViewImage', size_divisor=None, size=(960, 1600))
    assert collect_results.input_size(sf_s, 'test') == (960, 1600)


def test_test_run_and_resumed_history(tmp_path):
    text = dump_config(tmp_path / 'w', 'cond_ray')
    work = tmp_path / 'w'
    train_run(work, '20260101_000000', text, [0.2, 0.4])
    row, = collect_results.main([str(work), '--no-cost'])
    check_metrics(row, 0.4)
    # tools/test.py afterwards into the same work dir: the newest run with metrics is the test
    tools_test_run(work, '20260102_000000', text, 0.33)
    row, = collect_results.main([str(work), '--no-cost'])
    check_metrics(row, 0.33)
    assert row['evaluated'] == 'test 20260102_000000'

    # a resumed run continues the history: the best (0.5, epoch 2) is before the resume
    resumed = tmp_path / 'r'
    text = dump_config(resumed, 'cond_ray')
    train_run(resumed, '20260101_000000', text, [0.3, 0.5, 0.45])
    train_run(resumed, '20260101_010000', text.replace('resume = False', 'resume = True'), [0.44, 0.46],
              first_epoch=3)  # resumed from epoch 2: its epoch 3 replaces the first run's
    assert 'resume = False' in text
    row, = collect_results.main([str(resumed), '--no-cost'])
    check_metrics(row, 0.5)
    assert row['evaluated'] == 'val step 2 (best NDS of 4)'
    row, = collect_results.main([str(resumed), '--no-cost', '--last'])
    check_metrics(row, 0.46)
    # a fresh (not resumed) run in the same work dir starts a new history
    train_run(resumed, '20260101_020000', text, [0.05])
    row, = collect_results.main([str(resumed), '--no-cost'])
    check_metrics(row, 0.05)


def test_duplicate_config_names_are_labelled_by_work_dir(tmp_path):
    for name in ('x', 'y'):
        train_run(tmp_path / name, '20260101_000000', dump_config(tmp_path / name, 'grid_4x6'), [0.1])
    rows = collect_results.main([str(tmp_path / 'x'), str(tmp_path / 'y'), '--no-cost'])
    assert [r['config'] for r in rows] == ['x/grid_4x6', 'y/grid_4x6']


def test_work_dirs_without_results_are_named(tmp_path, capsys):
    good = tmp_path / 'good'
    train_run(good, '20260101_000000', dump_config(good, 'cond_none'), [0.2])
    training = tmp_path / 'training'  # a run that has not validated yet: training lines only
    train_run(training, '20260101_000000', dump_config(training, 'grid_8x14'), [0.2])
    scalars = training / '20260101_000000/vis_data/scalars.json'
    scalars.write_text(''.join(line + '\n' for line in scalars.read_text().splitlines() if 'NDS' not in line))
    no_config = tmp_path / 'no_config'
    train_run(no_config, '20260101_000000', 'resume = False\n', [0.2])
    with pytest.raises(SystemExit) as err:
        collect_results.main([str(good), str(training), str(no_config), str(tmp_path / 'absent'), '--no-cost'])
    message = str(err.value)
    assert f'{training}: no evaluation results' in message and 'NuScenes/NDS' in message
    assert '20260101_000000' in message  # the runs it did find
    assert f'{no_config}: no config dumped' in message
    assert f'{tmp_path / "absent"}: not a directory' in message
    assert str(good) + ':' not in message

    capsys.readouterr()
    rows = collect_results.main([str(good), str(training), '--no-cost', '--skip-missing'])
    assert [r['config'] for r in rows] == ['cond_none']
    assert f'skipped {training}: no evaluation results' in capsys.readouterr().err

    broken = tmp_path / 'broken'
    train_run(broken, '20260101_000000', dump_config(broken, 'cond_none'), [0.2])
    with open(broken / '20260101_000000/vis_data/scalars.json', 'a') as f:
        f.write('{"NuScenes/NDS": 0.3\n')
    with pytest.raises(SystemExit, match='scalars.json:4: not a JSON line'):
        collect_results.main([str(broken), '--no-cost'])
