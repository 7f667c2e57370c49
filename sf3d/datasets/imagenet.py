"""ImageNet-style image folders (``ROOT/<split>/<wnid>/<image>``) for classification pretraining.

Works with the ILSVRC-2012 folder layout (train and val both sorted into one folder per
wnid, as torchvision's ImageFolder expects) and with the synthetic set written by
``tools/make_synthetic_imagenet.py``. Image augmentation is timm's
(``timm.data.create_transform``), configured by a dict in the config.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, auto_augment, create_transform

from sf3d.registry import DATASETS

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
SPLITS = ('train', 'val')
_HOW_TO_GET_DATA = ('see data/README.md for where ImageNet goes, or write a small synthetic set '
                    'with `python tools/make_synthetic_imagenet.py --out DIR`')


def _list_class_dirs(split_dir: str) -> List[str]:
    """Sorted names of the class sub-folders of `split_dir` (hidden folders ignored)."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f'image folder {split_dir} does not exist; {_HOW_TO_GET_DATA}')
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith('.'))
    if not names:
        raise FileNotFoundError(f'image folder {split_dir} has no class sub-folders '
                                f'(expected {split_dir}/<wnid>/<image>); {_HOW_TO_GET_DATA}')
    return names


def _list_images(class_dir: str) -> List[str]:
    """Sorted names of the images directly inside `class_dir` (.JPEG/.jpg/.jpeg/.png, any case)."""
    names = sorted(e.name for e in os.scandir(class_dir)
                   if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f'class folder {class_dir} holds no images '
                                f'(expected files ending in {", ".join(IMAGE_EXTENSIONS)})')
    return names


def _posterize_zero_bits_black(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black image (what older Pillow returned).

    timm's RandAugment 'inc1' maps magnitude 10 (reached with mstd > 0, e.g. the DeiT recipe
    'rand-m9-mstd0.5-inc1') to 0 bits; Pillow 13 (installed here) raises ValueError for that.
    """
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(transform) -> None:
    """Point the Posterize ops of timm's RandAugment/AutoAugment/AugMix in `transform` (a
    Compose) at `_posterize_zero_bits_black`; only these transform objects change, not timm."""
    for t in getattr(transform, 'transforms', [transform]):
        ops = list(getattr(t, 'ops', []))
        for sub_policy in getattr(t, 'policy', []):
            ops.extend(sub_policy)
        for op in ops:
            if isinstance(op, auto_augment.AugmentOp) and op.name.startswith('Posterize'):
                op.aug_fn = _posterize_zero_bits_black


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; a missing, unreadable or corrupt file raises OSError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise OSError(f'cannot read image {path}: {e}') from e


@DATASETS.register_module()
class ImageNetFolder(Dataset):
    """Classification images in ``data_root/<split>/<wnid>/*.JPEG``.

    Classes are the sorted wnid folders of ``data_root/train`` (of ``data_root/<split>`` when
    there is no train folder), so every split shares one class index mapping; a wnid in the
    split that is not a class is an error. ``class_names`` (a list of wnids) instead fixes
    the classes and their order: label i is ``class_names[i]``, every listed class must exist,
    and images of unlisted classes are skipped (for ImageNet subsets).

    Args:
        data_root: the folder holding ``train/`` and ``val/``.
        split: 'train' or 'val'.
        transform: keyword arguments of ``timm.data.create_transform`` (e.g.
            ``dict(input_size=224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1')``);
            None converts the image at its own size to a tensor normalised with the ImageNet
            mean and std (batches then need equal-sized images).
        class_names: optional list of wnids fixing the classes and their order (see above).
        max_samples: keep only this many samples, taken round-robin over the classes
            (sample j of every class before sample j + 1 of any), for quick runs.
        lazy_init: do not scan the folders until first use (or ``full_init()``).

    ``dataset[i]`` is ``dict(inputs=Tensor (3, H, W) float, data_samples=dict(gt_label=int,
    img_path=str))``; mmengine's ``default_collate`` makes ``inputs`` (B, 3, H, W) and
    ``data_samples`` ``{'gt_label': LongTensor (B,), 'img_path': list of B str}``.
    ``metainfo`` is ``{'classes': tuple of wnids}``.
    """

    def __init__(self, data_root: str, split: str = 'train', transform: Optional[dict] = None,
                 class_names: Optional[List[str]] = None, max_samples: Optional[int] = None,
                 lazy_init: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f'max_samples must be None or >= 1, got {max_samples}')
        if class_names is not None and (not class_names or len(set(class_names)) != len(class_names)):
            raise ValueError(f'class_names must be None or a non-empty list of distinct wnids, '
                             f'got {class_names}')
        self.data_root = str(data_root)
        self.split = split
        self.transform_cfg = dict(transform) if transform is not None else None
        self.transform = self._build_transform(self.transform_cfg)
        self.max_samples = max_samples
        self._classes: Optional[Tuple[str, ...]] = tuple(class_names) if class_names else None
        # samples as flat numpy arrays (no per-item Python objects: DataLoader workers
        # share them without copy-on-read): paths relative to the split folder, labels
        self._rel_paths = np.zeros(0, dtype=bytes)  # (N,)
        self._labels = np.zeros(0, dtype=np.int64)  # (N,)
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @staticmethod
    def _build_transform(cfg: Optional[dict]):
        if cfg is None:
            return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        transform = create_transform(**cfg)
        _patch_posterize(transform)
        return transform

    @property
    def split_dir(self) -> str:
        return os.path.join(self.data_root, self.split)

    def _class_reference_dir(self) -> str:
        train_dir = os.path.join(self.data_root, 'train')
        return train_dir if os.path.isdir(train_dir) else self.split_dir

    @property
    def metainfo(self) -> Dict[str, tuple]:
        """``{'classes': tuple of wnids}`` in label order."""
        if self._classes is None:
            self._classes = tuple(_list_class_dirs(self._class_reference_dir()))
        return {'classes': self._classes}

    def full_init(self) -> None:
        """Scan the split folder into (path, label) samples; done once."""
        if self._fully_initialized:
            return
        explicit = self._classes is not None
        classes = self.metainfo['classes']
        ref_dir = self._class_reference_dir()
        if explicit:
            available = set(_list_class_dirs(ref_dir))
            missing = [c for c in classes if c not in available]
            if missing:
                raise ValueError(f'class_names {missing} have no folder in {ref_dir}')
        label_of = {c: i for i, c in enumerate(classes)}
        per_class: List[List[Tuple[bytes, int]]] = []  # per class folder: (relative path, label)
        for name in _list_class_dirs(self.split_dir):
            if name not in label_of:
                if explicit:
                    continue
                raise ValueError(f'class folder {os.path.join(self.split_dir, name)} is not one of the '
                                 f'{len(classes)} classes of {ref_dir}')
            files = _list_images(os.path.join(self.split_dir, name))
            per_class.append([(os.fsencode(os.path.join(name, f)), label_of[name]) for f in files])
        # round-robin over classes: a max_samples prefix stays balanced
        longest = max((len(s) for s in per_class), default=0)
        samples = [s[j] for j in range(longest) for s in per_class if j < len(s)]
        if not samples:
            raise FileNotFoundError(f'no images of classes {list(classes)} in {self.split_dir}')
        samples = samples[:self.max_samples] if self.max_samples else samples
        self._rel_paths = np.array([p for p, _ in samples], dtype=bytes)
        self._labels = np.array([label for _, label in samples], dtype=np.int64)
        self._fully_initialized = True

    def get_sample(self, index: int) -> Tuple[str, int]:
        """(image path, label) of sample `index`, without reading the image."""
        self.full_init()
        return os.path.join(self.split_dir, os.fsdecode(self._rel_paths[index])), int(self._labels[index])

    def __len__(self) -> int:
        self.full_init()
        return len(self._labels)

    def __getitem__(self, index: int) -> dict:
        path, label = self.get_sample(index)
        inputs = self.transform(load_rgb(path))  # (3, H, W)
        return dict(inputs=inputs, data_samples=dict(gt_label=label, img_path=path))

    def __repr__(self) -> str:
        n = len(self._labels) if self._fully_initialized else 'not scanned'
        return (f'{type(self).__name__}(data_root={self.data_root!r}, split={self.split!r}, '
                f'samples={n}, transform={self.transform_cfg})')
