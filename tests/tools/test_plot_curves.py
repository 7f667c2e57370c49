"""tools/analysis/plot_curves.py: validation metrics placed at the last training iteration of
their epoch (or at their step, iteration-based), seeds of a label averaged, the first iteration
reaching a value, a markdown row per validation, a PNG, clear errors."""
import json

import pytest

from tool_loader import load_tool

curves = load_tool('analysis/plot_curves')


def write_run(root, iters_per_epoch, nds, stamp='20260101_000000'):
    vis = root / stamp / 'vis_data'
    vis.mkdir(parents=True)
    lines = []
    for epoch, value in enumerate(nds, 1):
        for i in range(10, iters_per_epoch + 1, 10):
            it = (epoch - 1) * iters_per_epoch + i
            lines.append(dict(lr=1e-3, loss=1.0, epoch=epoch, iter=it, step=it))
        lines.append({'NuScenes/NDS': value, 'NuScenes/mAP': value / 2, 'step': epoch})
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
    return root


def test_metrics_against_iterations(tmp_path, capsys):
    a = write_run(tmp_path / 'a', 20, [0.1, 0.2])
    b = write_run(tmp_path / 'b', 30, [0.05, 0.3, 0.35])
    out = tmp_path / 'c.png'
    runs = curves.main([str(a), str(b), '--labels', 'tokens', 'learned', '--out', str(out)])
    assert runs['tokens']['NuScenes/NDS'] == [(20, 0.1, 0.0, 1), (40, 0.2, 0.0, 1)]
    assert runs['learned']['NuScenes/mAP'] == [(30, 0.025, 0.0, 1), (60, 0.15, 0.0, 1), (90, 0.175, 0.0, 1)]
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith('| iteration | tokens NuScenes/NDS') and len(table) == 2 + 5  # 20 30 40 60 90
    assert '| 40 | 0.2000 | 0.1000 |  |  |' in table
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_newest_run_of_a_work_dir_is_read(tmp_path):
    write_run(tmp_path, 10, [0.9], stamp='20260101_000000')
    write_run(tmp_path, 10, [0.4], stamp='20260102_000000')
    assert curves.read_curves(curves.find_scalars(str(tmp_path)), ['NuScenes/NDS'])['NuScenes/NDS'] == [(10, 0.4)]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='scalars.json'):
        curves.find_scalars(str(tmp_path))
    path = curves.find_scalars(str(write_run(tmp_path / 'r', 10, [0.1])))
    with pytest.raises(KeyError, match='NuScenes/ATE'):
        curves.read_curves(path, ['NuScenes/ATE'])
    with open(path, 'a') as f:
        f.write('not json\n')
    with pytest.raises(ValueError, match='not a JSON line'):
        curves.read_curves(path, ['NuScenes/NDS'])
    with pytest.raises(SystemExit):
        curves.parse_args(['a', 'b', '--labels', 'one'])


def write_iter_run(root, interval, miou):
    vis = root / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = []
    for k, value in enumerate(miou, 1):
        lines += [dict(lr=1e-3, loss=1.0, iter=it, step=it)
                  for it in range((k - 1) * interval + 10, k * interval + 1, 10)]
        lines.append({'seg/mIoU': value, 'step': k * interval})
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
    return root


def test_seeds_of_a_label_are_averaged_and_reach_is_the_first_mean_above(tmp_path, capsys):
    dirs = [write_iter_run(tmp_path / n, 50, v) for n, v in
            (('t0', [10, 40, 60]), ('t1', [20, 50, 62]), ('l0', [5, 30, 70]), ('l1', [5, 40, 70]),
             ('l2', [5, 35, 73]))]
    runs = curves.main([str(d) for d in dirs] + ['--labels', 'tokens', 'tokens', 'learned', 'learned', 'learned',
                                                  '--key', 'seg/mIoU', '--reach', '45', '65',
                                                  '--out', str(tmp_path / 'c.png')])
    # sample std (ddof 1): two runs 10, 20 -> 7.0711; three runs 70, 70, 73 -> sqrt(3)
    r2, r3 = 50 ** 0.5, 3 ** 0.5
    flat = lambda stats: [x for row in stats for x in row]  # noqa: E731
    assert flat(runs['tokens']['seg/mIoU']) == pytest.approx(flat([(50, 15.0, r2, 2), (100, 45.0, r2, 2),
                                                                  (150, 61.0, 2 ** 0.5, 2)]))
    assert flat(runs['learned']['seg/mIoU']) == pytest.approx(flat([(50, 5.0, 0.0, 3), (100, 35.0, 5.0, 3),
                                                                   (150, 71.0, r3, 3)]))
    out = capsys.readouterr().out
    assert '| 100 | 45.0000 ± 7.0711 | 35.0000 ± 5.0000 |' in out
    reach45, reach65 = out.split('first iteration with mean >= ')[1:]
    assert '| tokens | 100 |' in reach45 and '| learned | 150 |' in reach45
    assert '| tokens | not reached |' in reach65 and '| learned | 150 |' in reach65
    assert curves.first_reach(runs['tokens']['seg/mIoU'], 99) is None


def test_seeds_must_share_iterations_and_iteration_runs_need_iteration_steps(tmp_path):
    with pytest.raises(ValueError, match='same iterations'):
        curves.aggregate([[(10, 1.0), (20, 2.0)], [(10, 1.0)]], 'tokens seg/mIoU')
    root = write_iter_run(tmp_path / 'r', 50, [10])
    path = curves.find_scalars(str(root))
    with open(path, 'a') as f:  # mmengine's default LoggerHook logs an iteration-based validation at step 0
        f.write(json.dumps({'seg/mIoU': 3.0, 'step': 0}) + '\n')
    with pytest.raises(ValueError, match='log_metric_by_epoch=False'):
        curves.read_curves(path, ['seg/mIoU'])


def test_a_file_with_epoch_and_iteration_runs_is_refused(tmp_path):
    root = write_iter_run(tmp_path / 'r', 50, [10])
    path = curves.find_scalars(str(root))
    with open(path, 'a') as f:
        f.write(json.dumps(dict(lr=1e-3, loss=1.0, epoch=1, iter=10, step=10)) + '\n')
    with pytest.raises(ValueError, match='with and without an epoch'):
        curves.read_curves(path, ['seg/mIoU'])


def write_resumed(root, iters_per_epoch, nds, first_epoch, stamp):
    """A scalars.json as `tools/train.py --resume` leaves it: training lines from ``first_epoch`` on."""
    write_run(root, iters_per_epoch, [0.0] * (first_epoch - 1) + nds, stamp=stamp)
    path = root / stamp / 'vis_data' / 'scalars.json'
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    kept = [x for x in lines if x.get('epoch', x['step'] if 'NuScenes/NDS' in x else 0) >= first_epoch]
    path.write_text('\n'.join(json.dumps(x) for x in kept) + '\n')


def test_resumed_run_is_read_with_the_run_it_resumed(tmp_path):
    write_run(tmp_path, 10, [0.1, 0.2, 0.3], stamp='20260101_000000')  # preempted after epoch 3's validation
    write_resumed(tmp_path, 10, [0.35, 0.4], first_epoch=4, stamp='20260102_000000')
    got = curves.read_work_dir(str(tmp_path), ['NuScenes/NDS'])['NuScenes/NDS']
    assert got == [(10, 0.1), (20, 0.2), (30, 0.3), (40, 0.35), (50, 0.4)]
    write_run(tmp_path, 10, [0.5], stamp='20260103_000000')  # a rerun from scratch replaces both
    assert curves.read_work_dir(str(tmp_path), ['NuScenes/NDS'])['NuScenes/NDS'] == [(10, 0.5)]
    with pytest.raises(KeyError, match='NuScenes/ATE'):
        curves.read_work_dir(str(tmp_path), ['NuScenes/ATE'])
