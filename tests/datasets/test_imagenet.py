"""sf3d.datasets.ImageNetFolder on a tiny synthetic set: samples, class mapping, batching,
subsets, and errors on missing folders and corrupt images."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import AugmentOp

from sf3d.datasets import ImageNetFolder
from sf3d.registry import DATASETS
from tool_loader import load_tool

WNIDS = ('n00000000', 'n00000001', 'n00000002')
TRAIN_TF = dict(input_size=24, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25,
                re_mode='pixel', interpolation='bicubic')
VAL_TF = dict(input_size=24, crop_pct=0.875, interpolation='bicubic')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    tool = load_tool('make_synthetic_imagenet')
    root = tmp_path_factory.mktemp('imagenet')
    tool.make_synthetic_imagenet(root, num_classes=3, train_per_class=4, val_per_class=2, size=32,
                                 seed=0, progress=False)
    return root


@pytest.fixture
def copy_root(data_root, tmp_path) -> Path:
    """A private copy of the tiny set that a test may damage."""
    return Path(shutil.copytree(data_root, tmp_path / 'copy'))


def _label_of_path(path: str) -> int:
    return WNIDS.index(Path(path).parent.name)


def test_train_and_val_samples(data_root):
    train = DATASETS.build(dict(type='ImageNetFolder', data_root=str(data_root), transform=TRAIN_TF))
    val = ImageNetFolder(str(data_root), split='val', transform=VAL_TF)
    assert len(train) == 12 and len(val) == 6
    assert train.metainfo == val.metainfo == {'classes': WNIDS}
    for ds, split in ((train, 'train'), (val, 'val')):
        for i in range(len(ds)):
            item = ds[i]
            assert item['inputs'].shape == (3, 24, 24) and item['inputs'].dtype == torch.float32
            sample = item['data_samples']
            assert isinstance(sample['gt_label'], int)
            assert Path(sample['img_path']).parent.parent == data_root / split
            assert sample['gt_label'] == _label_of_path(sample['img_path'])
    assert sorted(Path(val[i]['data_samples']['img_path']).name for i in range(6)) == \
        [f'ILSVRC2012_val_{n:08d}.JPEG' for n in range(1, 7)]


def test_no_transform_is_normalised_pixels(data_root):
    ds = ImageNetFolder(str(data_root), split='val')
    item = ds[0]
    with Image.open(item['data_samples']['img_path']) as img:
        pixels = np.asarray(img.convert('RGB'), np.float32) / 255  # (H, W, 3)
    expected = (pixels - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(item['inputs'].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_default_collate_batch(data_root):
    ds = ImageNetFolder(str(data_root), split='val', transform=VAL_TF)
    items = [ds[i] for i in range(4)]
    batch = default_collate(items)
    assert batch['inputs'].shape == (4, 3, 24, 24)
    torch.testing.assert_close(batch['inputs'][2], items[2]['inputs'])
    labels = batch['data_samples']['gt_label']
    assert labels.dtype == torch.int64 and labels.tolist() == [it['data_samples']['gt_label'] for it in items]
    assert batch['data_samples']['img_path'] == [it['data_samples']['img_path'] for it in items]


def test_val_uses_train_mapping_and_rejects_unknown_wnid(copy_root):
    # drop class 0 from val: the remaining classes keep their train labels
    shutil.rmtree(copy_root / 'val' / WNIDS[0])
    val = ImageNetFolder(str(copy_root), split='val')
    assert val.metainfo['classes'] == WNIDS
    assert sorted({val.get_sample(i)[1] for i in range(len(val))}) == [1, 2]
    extra = copy_root / 'val' / 'n00000099'
    extra.mkdir()
    shutil.copy(next((copy_root / 'val' / WNIDS[1]).iterdir()), extra / 'x.JPEG')
    with pytest.raises(ValueError, match=f'{extra}.*not one of the 3 classes'):
        ImageNetFolder(str(copy_root), split='val')


def test_without_train_folder_classes_come_from_the_split(copy_root):
    shutil.rmtree(copy_root / 'train')
    assert ImageNetFolder(str(copy_root), split='val').metainfo['classes'] == WNIDS


def test_class_names_subset_and_order(data_root):
    ds = ImageNetFolder(str(data_root), class_names=['n00000002', 'n00000000'])
    assert ds.metainfo['classes'] == ('n00000002', 'n00000000') and len(ds) == 8
    for i in range(len(ds)):
        path, label = ds.get_sample(i)
        assert ds.metainfo['classes'][label] == Path(path).parent.name
    with pytest.raises(ValueError, match=r"\['n00000042'\] have no folder"):
        ImageNetFolder(str(data_root), class_names=['n00000000', 'n00000042'])
    with pytest.raises(ValueError, match='distinct'):
        ImageNetFolder(str(data_root), class_names=['n00000000', 'n00000000'])


def test_max_samples_is_balanced_and_deterministic(data_root):
    a = ImageNetFolder(str(data_root), max_samples=5)
    b = ImageNetFolder(str(data_root), max_samples=5)
    assert len(a) == 5
    samples = [a.get_sample(i) for i in range(5)]
    assert samples == [b.get_sample(i) for i in range(5)]
    assert [label for _, label in samples] == [0, 1, 2, 0, 1]
    assert len({path for path, _ in samples}) == 5


def test_lazy_init_defers_scanning(tmp_path):
    ds = ImageNetFolder(str(tmp_path / 'absent'), lazy_init=True)
    with pytest.raises(FileNotFoundError):
        len(ds)


def test_missing_root_and_split(tmp_path, copy_root):
    with pytest.raises(FileNotFoundError, match=f'{tmp_path / "absent" / "train"}.*make_synthetic_imagenet'):
        ImageNetFolder(str(tmp_path / 'absent'))
    shutil.rmtree(copy_root / 'val')
    with pytest.raises(FileNotFoundError, match=f'{copy_root / "val"} does not exist.*data/README.md'):
        ImageNetFolder(str(copy_root), split='val')
    with pytest.raises(ValueError, match="split must be one of"):
        ImageNetFolder(str(copy_root), split='test')


def test_empty_class_folder(copy_root):
    empty = copy_root / 'train' / WNIDS[1]
    for f in empty.iterdir():
        f.unlink()
    (empty / 'readme.txt').write_text('not an image')
    with pytest.raises(FileNotFoundError, match=f'class folder {empty} holds no images'):
        ImageNetFolder(str(copy_root))


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_corrupt_image_names_the_file(copy_root, damage):
    ds = ImageNetFolder(str(copy_root), split='val', transform=VAL_TF)
    path, _ = ds.get_sample(3)
    data = Path(path).read_bytes()
    Path(path).write_bytes(b'not a jpeg at all' * 10 if damage == 'garbage' else data[:len(data) // 2])
    ds[2]  # other images still load
    with pytest.raises(OSError, match=f'cannot read image {path}') as err:
        ds[3]
    assert err.value.__cause__ is not None


def test_image_extensions(tmp_path):
    rgb = np.full((8, 8, 3), 100, np.uint8)
    names = {'a': ['x.jpg', 'y.JPEG', 'z.PNG', 'w.jpeg'], 'b': ['v.png']}
    for wnid, files in names.items():
        (tmp_path / 'train' / wnid).mkdir(parents=True)
        for name in files:
            fmt = 'PNG' if name.lower().endswith('png') else 'JPEG'
            Image.fromarray(rgb).save(tmp_path / 'train' / wnid / name, format=fmt)
        (tmp_path / 'train' / wnid / 'labels.csv').write_text('ignored')
    (tmp_path / 'train' / '.cache').mkdir()  # hidden folders are not classes
    ds = ImageNetFolder(str(tmp_path))
    assert ds.metainfo['classes'] == ('a', 'b') and len(ds) == 5
    assert ds[0]['inputs'].shape == (3, 8, 8)


def test_randaugment_posterize_at_full_magnitude(data_root):
    """timm maps RandAugment 'inc1' magnitude 10 to keeping 0 bits; Pillow 13 refuses that, so
    the dataset makes those ops return a black image (the result older Pillow gave)."""
    ds = ImageNetFolder(str(data_root), transform=TRAIN_TF)
    rand_augment = next(t for t in ds.transform.transforms if hasattr(t, 'ops'))
    op = next(o for o in rand_augment.ops if o.name == 'PosterizeIncreasing')
    assert isinstance(op, AugmentOp)
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(op(img)).max() == 0
    op.magnitude = 5  # 4 - int(0.5 * 4) = 2 bits kept: 200 -> 192
    assert np.asarray(op(img)).max() == 192
