"""``ADE20KDataset``: semantic segmentation in the ADEChallengeData2016 folder layout.

``data_root/images/{training,validation}/*.jpg`` and ``data_root/annotations/{training,validation}/*.png``
(uint8 label maps: 0 = "other", v = 1..150 the v-th class), paired by the file's path relative to
its folder without the suffix (as mmseg's ``BaseSegDataset``). The synthetic set of
``tools/make_synthetic_ade.py`` has the same layout (its class names: ``synthetic_ade.CLASSES``).

A sample (``get_data_info``) is ``dict(img_path, seg_map_path, reduce_zero_label, sample_idx)``
(``seg_map_path`` None for an image-only dataset); the pipeline loads the pixels: the generic
image loader for ``img``, ``LoadSegAnnotation`` for ``gt_seg_map``, which applies
``reduce_zero_label`` (0 -> 255 = ignore, v -> v - 1), so label i is ``classes[i]``.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

from mmengine.dataset import BaseDataset

from sf3d.registry import DATASETS, TRANSFORMS

ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
    'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle',
    'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
    'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
    'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray',
    'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag')
IGNORE_INDEX = 255
_HOW_TO_GET_DATA = ('see data/README.md for where ADE20K goes (data/ade/ADEChallengeData2016), or write a '
                    'small synthetic set with `python tools/make_synthetic_ade.py --out data/synthetic_ade`')


def _list_files(folder: str, suffix: str) -> List[str]:
    """Sorted paths, relative to `folder`, of the files below it (recursively) ending in `suffix`."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(osp.relpath(osp.join(parent, f), folder) for f in files if f.endswith(suffix))
    return sorted(found)


@DATASETS.register_module()
class ADE20KDataset(BaseDataset):
    """ADE20K-format semantic segmentation (module docstring for the layout and the samples).

    Args:
        data_root: the ``ADEChallengeData2016`` folder (relative prefixes are joined to it).
        data_prefix: ``dict(img_path=..., seg_map_path=...)`` folders of the images and label maps;
            without ``seg_map_path`` the dataset lists images only (e.g. the unlabelled test set).
        pipeline: transforms (configs or callables), built from ``sf3d.registry.TRANSFORMS``.
        classes: class names, label i = ``classes[i]`` (file value i + 1 with ``reduce_zero_label``);
            default the 150 ADE20K classes. At most 255 (255 is the ignore label).
        reduce_zero_label: stored in every sample for ``LoadSegAnnotation``; file value 0 becomes
            255 (ignored) and v becomes v - 1.
        img_suffix, seg_map_suffix: file endings of images and label maps.
        **kwargs: passed to mmengine's ``BaseDataset`` (``indices``, ``test_mode``, ``serialize_data``,
            ``lazy_init``, ...).

    ``metainfo`` is ``dict(classes=tuple, dataset='ade20k')`` (mmengine's Runner hands it to the metric).
    """

    METAINFO = dict(classes=ADE20K_CLASSES, dataset='ade20k')

    def __init__(self, data_root: str = '',
                 data_prefix: Optional[Dict[str, str]] = None,
                 pipeline: Sequence = (), classes: Optional[Sequence[str]] = None,
                 reduce_zero_label: bool = True, img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 **kwargs):
        if data_prefix is None:
            data_prefix = dict(img_path='images/training', seg_map_path='annotations/training')
        unknown = set(data_prefix) - {'img_path', 'seg_map_path'}
        if 'img_path' not in data_prefix or unknown:
            raise ValueError(f"ADE20KDataset: data_prefix must be dict(img_path=..., [seg_map_path=...]), got "
                             f'{data_prefix}')
        classes = ADE20K_CLASSES if classes is None else tuple(classes)
        if (not classes or len(set(classes)) != len(classes) or len(classes) > IGNORE_INDEX
                or not all(isinstance(c, str) for c in classes)):
            raise ValueError(f'ADE20KDataset: classes must be 1..{IGNORE_INDEX} distinct names, got {classes}')
        self.reduce_zero_label = bool(reduce_zero_label)
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(data_root=data_root, data_prefix=dict(data_prefix), pipeline=transforms,
                         metainfo=dict(classes=classes), **kwargs)

    def load_data_list(self) -> List[dict]:
        """One sample per image below ``img_path``; its label map is the file of the same relative
        path and stem below ``seg_map_path`` (an error if missing)."""
        img_dir, seg_dir = self.data_prefix['img_path'], self.data_prefix.get('seg_map_path')
        for name, folder in (('img_path', img_dir), ('seg_map_path', seg_dir)):
            if folder is not None and not osp.isdir(folder):
                raise FileNotFoundError(f'ADE20KDataset: {name} folder {folder} does not exist; {_HOW_TO_GET_DATA}')
        images = _list_files(img_dir, self.img_suffix)
        if not images:
            raise FileNotFoundError(f'ADE20KDataset: no *{self.img_suffix} images in {img_dir}; {_HOW_TO_GET_DATA}')
        data_list = []
        for rel in images:
            info = dict(img_path=osp.join(img_dir, rel), seg_map_path=None, reduce_zero_label=self.reduce_zero_label)
            if seg_dir is not None:
                seg = osp.join(seg_dir, rel[:-len(self.img_suffix)] + self.seg_map_suffix)
                if not osp.isfile(seg):
                    raise FileNotFoundError(f'ADE20KDataset: image {info["img_path"]} has no annotation {seg}')
                info['seg_map_path'] = seg
            data_list.append(info)
        return data_list

    def __repr__(self) -> str:
        n = len(self) if getattr(self, '_fully_initialized', False) else 'not scanned'
        return (f'{type(self).__name__}(data_root={self.data_root!r}, data_prefix={self.data_prefix}, samples={n}, '
                f'classes={len(self.metainfo["classes"])}, reduce_zero_label={self.reduce_zero_label})')
