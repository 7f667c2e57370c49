"""tools/analysis/get_flops.py: the backbone count equals the backbone row of a whole-model count
(--whole runs a 2D model's predict on one image), the heads add to it, bad shapes are refused."""
import sys
from pathlib import Path

import pytest

from tool_loader import load_tool

flops = load_tool('analysis/get_flops')
TINY_DETR = str(Path(__file__).resolve().parents[2] / 'configs/synthetic/coco_tiny_detr.py')


def _rows(capsys, monkeypatch, *args):
    monkeypatch.setattr(sys, 'argv', ['get_flops.py', TINY_DETR, '--shape', '64', '96', *args])
    flops.main()
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('| ') and len(cells) == 3 and cells[0] not in ('module', '---'):
            rows[cells[0]] = (float(cells[1]), None if cells[2] == '-' else float(cells[2]))
    return out, rows


def test_whole_model_count_contains_the_backbone_count(capsys, monkeypatch):
    out, backbone_only = _rows(capsys, monkeypatch)
    assert '-> model.backbone' in out and backbone_only['head'][1] is None  # the head is not reached
    out, whole = _rows(capsys, monkeypatch, '--whole')
    assert '-> model (predict)' in out
    assert whole['backbone'][1] == pytest.approx(backbone_only['backbone'][1], abs=1e-3)
    assert whole['head'][1] > 0 and whole['neck'][1] > 0
    assert whole['total'][1] == pytest.approx(sum(v[1] for k, v in whole.items() if k != 'total'), abs=2e-3)
    assert whole['total'][0] == backbone_only['total'][0]  # the same parameters either way


def test_whole_needs_padded_shapes():
    with pytest.raises(ValueError, match='multiples of 32'):
        flops.whole_model_inputs(100, 96)
