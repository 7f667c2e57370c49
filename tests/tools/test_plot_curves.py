"""tools/analysis/plot_curves.py: validation metrics placed at the last training iteration of
their epoch, a markdown row per validation, a PNG, clear errors."""
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
    assert runs['tokens']['NuScenes/NDS'] == [(20, 0.1), (40, 0.2)]
    assert runs['learned']['NuScenes/mAP'] == [(30, 0.025), (60, 0.15), (90, 0.175)]
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
