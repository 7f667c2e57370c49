"""tools/make_synthetic_coco.py and sf3d/datasets/synthetic_coco.py: the files load with pycocotools,
masks agree with the stored areas and boxes and with the painted pixels, occlusion is respected,
determinism, the CLI, argument checks and the overwrite policy."""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage
from tool_loader import load_tool

from sf3d.datasets import synthetic_coco as gen

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'make_synthetic_coco.py'
tool = load_tool('make_synthetic_coco')
ARGS = dict(num_train=12, num_val=4, size=64, seed=0)


def _coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_coco')
    counts = gen.generate(root, **ARGS)
    return root, counts


def test_layout_and_pycocotools(synth):
    root, counts = synth
    assert {s: c['images'] for s, c in counts.items()} == {'train': 12, 'val': 4}
    all_ids = []
    for split in gen.SPLITS:
        coco = _coco(root / gen.ann_file(split))
        assert [c['id'] for c in coco.dataset['categories']] == [1, 3, 7, 12]
        assert [c['name'] for c in coco.dataset['categories']] == ['circle', 'rectangle', 'triangle', 'ellipse']
        assert len(coco.getAnnIds()) == counts[split]['annotations']
        for img in coco.dataset['images']:
            assert img['file_name'] == f"{img['id']:012d}.jpg"
            with Image.open(root / gen.image_dir(split) / img['file_name']) as f:
                assert f.format == 'JPEG' and f.mode == 'RGB' and f.size == (img['width'], img['height'])
            assert 48 <= img['height'] <= 64 and 48 <= img['width'] <= 64
            all_ids.append(img['id'])
    assert len(set(all_ids)) == len(all_ids)  # unique over both splits, as COCO's
    assert json.loads((root / gen.MARKER).read_text())['num_train'] == 12


def test_masks_areas_boxes_and_occlusion(synth):
    root, _ = synth
    coco = _coco(root / gen.ann_file('train'))
    kinds = set()
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for ann, mask in zip(anns, masks):
            kinds.add('rle' if isinstance(ann['segmentation'], dict) else 'polygon')
            assert ann['iscrowd'] == 0 and ann['area'] == mask.sum() >= 12
            ys, xs = np.nonzero(mask)
            assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if masks:  # visible masks of one image never overlap: occlusion is respected
            assert np.sum(masks, axis=0).max() == 1
        # the painted pixels follow the masks: inside differs from the surrounding background
        pixels = np.asarray(Image.open(root / 'train2017' / info['file_name']), np.float32)
        union = np.any(masks, axis=0) if masks else np.zeros(pixels.shape[:2], bool)
        for mask in masks:
            core = ndimage.binary_erosion(mask, iterations=1)
            ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask) & ~union
            if core.sum() >= 4 and ring.sum() >= 4:
                assert np.abs(pixels[core].mean(0) - pixels[ring].mean(0)).sum() > 40
    assert kinds == {'rle', 'polygon'}  # unoccluded shapes as polygons, covered ones as RLE


def test_uncompressed_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for first in (0, 1):
        mask = rng.random((7, 9)) < 0.4
        mask[0, 0] = bool(first)
        rle = gen.uncompressed_rle(mask)
        assert rle['size'] == [7, 9] and sum(rle['counts']) == 63
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 9))
        np.testing.assert_array_equal(decoded, mask)
        assert mask_utils.area(mask_utils.frPyObjects(rle, 7, 9)) == mask.sum()


def test_deterministic_and_prefix_stable(synth, tmp_path):
    root, _ = synth
    gen.generate(tmp_path / 'again', **ARGS)
    assert _files(tmp_path / 'again') == _files(root)
    gen.generate(tmp_path / 'small', **dict(ARGS, num_train=5))
    small = json.loads((tmp_path / 'small' / gen.ann_file('train')).read_text())
    full = json.loads((root / gen.ann_file('train')).read_text())
    assert small['images'] == full['images'][:5]
    assert small['annotations'] == full['annotations'][:len(small['annotations'])]
    gen.generate(tmp_path / 'other', **dict(ARGS, seed=1))
    assert (tmp_path / 'other' / 'train2017' / '000000000001.jpg').read_bytes() != \
        (root / 'train2017' / '000000000001.jpg').read_bytes()


def test_cli_and_overwrite_policy(tmp_path):
    out = tmp_path / 'cli'
    args = ['--num-train', '3', '--num-val', '2', '--size', '48', '--seed', '2', '--no-progress']
    res = subprocess.run([sys.executable, str(TOOL), '--out', str(out), *args], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert 'train2017: 3 images' in res.stdout and 'val2017: 2 images' in res.stdout
    gen.generate(tmp_path / 'fn', num_train=3, num_val=2, size=48, seed=2)
    assert _files(out) == _files(tmp_path / 'fn')
    # a previous synthetic set is replaced: no stale images remain
    stale = out / 'train2017' / '000000000099.jpg'
    stale.write_bytes(b'x')
    assert tool.main(['--out', str(out), '--num-train', '2', '--num-val', '1', '--size', '48', '--no-progress']) == 0
    assert sorted(p.name for p in (out / 'train2017').iterdir()) == ['000000000001.jpg', '000000000002.jpg']
    # a foreign non-empty directory is refused, bad arguments exit with 2 and a message
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='synthetic_coco.json'):
        gen.generate(foreign, num_train=1, num_val=1, size=48)
    assert (foreign / 'keep.txt').read_text() == 'mine'
    for bad in (dict(size=16), dict(num_train=0), dict(seed=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            gen.generate(tmp_path / 'bad', **dict(dict(num_train=1, num_val=1, size=48), **bad))
    assert tool.main(['--out', str(tmp_path / 'bad2'), '--size', '8', '--no-progress']) == 2
