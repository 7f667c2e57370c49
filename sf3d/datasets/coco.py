"""``CocoDetection``: a COCO-format detection / instance-segmentation dataset.

Reads ``instances_*.json`` (COCO 2017, the synthetic set of ``tools/make_synthetic_coco.py``, or any
file in that format) and stores per image, as mmdet's ``CocoDataset`` does::

    img_path   data_prefix['img'] / file_name
    img_id     int          the COCO image id (CocoMetric matches predictions by it)
    height, width           the annotation's image size (LoadImage checks it against the file)
    instances  [dict(bbox=[x1, y1, x2, y2] float, bbox_label=int, ignore_flag=0 | 1 (iscrowd),
                     mask=the COCO segmentation (polygons or RLE; only with with_mask))]

Labels: label i is the i-th category of the file in ascending category id (COCO's 80 classes: the
usual 0..79; ``CocoMetric`` maps back with the same rule). ``metainfo``: ``classes`` (names in that
order), ``cat_ids`` (the ids in that order), ``dataset='coco'``.

Annotations skipped as in mmdet: ``ignore`` set, a box that does not overlap the image, ``area <= 0``
or a box narrower / lower than 1 pixel. ``iscrowd=1`` ones are kept with ``ignore_flag=1``
(``LoadCocoAnnotations`` keeps them out of the GT). An annotation with a category id the file does
not list, an unknown image id, a duplicate image id or a missing key is an error naming it.
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset

from sf3d.registry import DATASETS, TRANSFORMS

_HOW_TO_GET_DATA = ('see data/README.md for where COCO goes, or write a small synthetic set with '
                    '`python tools/make_synthetic_coco.py --out DIR`')
IMAGE_KEYS = ('id', 'file_name', 'height', 'width')
ANNOTATION_KEYS = ('image_id', 'category_id', 'bbox')


def load_coco_json(path: str) -> Dict:
    """The parsed annotation file at ``path``, checked to hold ``images`` and ``categories`` lists."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'COCO annotation file {path} does not exist; {_HOW_TO_GET_DATA}')
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f'COCO annotation file {path} is not valid JSON: {err}') from err
    for key in ('images', 'categories'):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f'COCO annotation file {path} has no {key!r} list (expected the COCO format: '
                             f'images, annotations, categories)')
    if not data['categories']:
        raise ValueError(f"COCO annotation file {path} lists no categories")
    return data


def sorted_categories(data: Dict, path: str) -> List[Dict]:
    """The file's categories in ascending id (the label order); duplicate ids are an error."""
    for i, cat in enumerate(data['categories']):
        if 'id' not in cat or 'name' not in cat:
            raise ValueError(f'{path}: categories[{i}] needs keys id and name, got {sorted(cat)}')
    cats = sorted(data['categories'], key=lambda c: int(c['id']))
    ids = [int(c['id']) for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f'{path}: duplicate category ids in {ids}')
    return cats


@DATASETS.register_module()
class CocoDetection(BaseDataset):
    """COCO-format images with boxes, labels and (optionally) masks (module docstring for the samples).

    Args:
        ann_file: the annotation JSON, relative to ``data_root`` unless absolute
            (e.g. ``annotations/instances_train2017.json``).
        data_root: the dataset folder (e.g. ``data/coco/``).
        data_prefix: ``dict(img='train2017/')``: the image folder, relative to ``data_root`` unless absolute.
        pipeline: transforms (config dicts built with ``sf3d.registry.TRANSFORMS``, or callables).
        with_mask: keep the segmentations in the samples (``LoadCocoAnnotations(with_mask=True)``
            needs them); False saves memory for box-only models.
        filter_empty_gt: drop images without a non-crowd annotation (training; ignored in test_mode).
        test_mode: evaluation: no filtering; pipelines may skip the annotations.
        indices: keep only these samples (an int n: the first n), for quick runs.
        serialize_data, lazy_init, max_refetch: as mmengine's ``BaseDataset``.
    """

    METAINFO = dict(dataset='coco')

    def __init__(self, ann_file: str, data_root: str = '', data_prefix: Optional[Dict] = None,
                 pipeline: Sequence = (), with_mask: bool = True, filter_empty_gt: bool = False,
                 test_mode: bool = False, indices: Optional[Union[int, Sequence[int]]] = None,
                 serialize_data: bool = True, lazy_init: bool = False, max_refetch: int = 1000):
        prefix = dict(img='') if data_prefix is None else data_prefix
        if not isinstance(prefix, dict) or set(prefix) != {'img'} or not isinstance(prefix['img'], str):
            raise ValueError(f"CocoDetection: data_prefix must be dict(img='<image folder>'), got {data_prefix!r}")
        if not ann_file:
            raise ValueError('CocoDetection: ann_file is required (e.g. annotations/instances_train2017.json)')
        self.with_mask = bool(with_mask)
        self.filter_empty_gt = bool(filter_empty_gt)
        transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=prefix, pipeline=transforms,
                         test_mode=test_mode, indices=indices, serialize_data=serialize_data,
                         lazy_init=lazy_init, max_refetch=max_refetch)

    def load_data_list(self) -> List[dict]:
        path = self.ann_file
        data = load_coco_json(path)
        if not osp.isdir(self.data_prefix['img']):
            raise FileNotFoundError(f"CocoDetection: image folder {self.data_prefix['img']} (data_prefix['img'] "
                                    f'joined with data_root) does not exist; {_HOW_TO_GET_DATA}')
        cats = sorted_categories(data, path)
        self.cat2label = {int(c['id']): i for i, c in enumerate(cats)}
        self._metainfo.update(classes=tuple(c['name'] for c in cats), cat_ids=tuple(self.cat2label))
        images, anns_of = {}, {}
        for i, img in enumerate(data['images']):
            missing = [k for k in IMAGE_KEYS if k not in img]
            if missing:
                raise ValueError(f'{path}: images[{i}] lacks keys {missing} (has {sorted(img)})')
            img_id = int(img['id'])
            if img_id in images:
                raise ValueError(f'{path}: duplicate image id {img_id} (images[{i}])')
            images[img_id] = img
            anns_of[img_id] = []
        for i, ann in enumerate(data.get('annotations', [])):
            missing = [k for k in ANNOTATION_KEYS if k not in ann]
            if missing:
                raise ValueError(f"{path}: annotations[{i}] (id {ann.get('id')}) lacks keys {missing}")
            if int(ann['image_id']) not in anns_of:
                raise ValueError(f"{path}: annotations[{i}] (id {ann.get('id')}) refers to image id "
                                 f"{ann['image_id']}, which is not in images")
            if int(ann['category_id']) not in self.cat2label:
                raise ValueError(f"{path}: annotations[{i}] (id {ann.get('id')}) has category_id "
                                 f"{ann['category_id']}, not one of the file's categories {sorted(self.cat2label)}")
            anns_of[int(ann['image_id'])].append(ann)
        return [self.parse_data_info(dict(img=images[i], anns=anns_of[i])) for i in images]

    def parse_data_info(self, raw: dict) -> dict:
        """One image and its annotations -> the stored sample (module docstring)."""
        img = raw['img']
        h, w = int(img['height']), int(img['width'])
        instances = []
        for ann in raw['anns']:
            if ann.get('ignore', False):
                continue
            x1, y1, bw, bh = (float(v) for v in ann['bbox'])
            if max(0.0, min(x1 + bw, w) - max(x1, 0.0)) * max(0.0, min(y1 + bh, h) - max(y1, 0.0)) == 0:
                continue
            if float(ann.get('area', bw * bh)) <= 0 or bw < 1 or bh < 1:
                continue
            inst = dict(bbox=[x1, y1, x1 + bw, y1 + bh], bbox_label=self.cat2label[int(ann['category_id'])],
                        ignore_flag=int(bool(ann.get('iscrowd', 0))))
            if self.with_mask:
                if not ann.get('segmentation'):
                    raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} of image {img['id']} has no "
                                     'segmentation; build CocoDetection with with_mask=False for box-only data')
                inst['mask'] = ann['segmentation']
            instances.append(inst)
        return dict(img_path=osp.join(self.data_prefix['img'], img['file_name']), img_id=int(img['id']),
                    height=h, width=w, instances=instances)

    def filter_data(self) -> List[dict]:
        """With ``filter_empty_gt`` (and not ``test_mode``): the images with a non-crowd instance."""
        if self.test_mode or not self.filter_empty_gt:
            return self.data_list
        return [d for d in self.data_list if any(not inst['ignore_flag'] for inst in d['instances'])]

    def get_cat_ids(self, idx: int) -> List[int]:
        """Labels (0..C-1) of the instances of sample ``idx``."""
        return [inst['bbox_label'] for inst in self.get_data_info(idx)['instances']]

    def __repr__(self) -> str:
        n = len(self) if self._fully_initialized else 'not loaded'
        return (f'{type(self).__name__}(ann_file={self.ann_file!r}, img={self.data_prefix["img"]!r}, '
                f'samples={n}, with_mask={self.with_mask}, test_mode={self.test_mode})')
