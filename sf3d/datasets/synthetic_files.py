"""Checks shared by the synthetic-set generators (ImageNet, COCO and ADE20K formats): argument
ranges, and the output folder, which must be new, empty or a previous synthetic set of the same
kind (recognised by its marker file) whose own files are cleared first."""
from pathlib import Path
from typing import Callable, Dict, Tuple


def check_generate_args(counts: Dict[str, int], size: int, size_range: Tuple[int, int], seed: int) -> None:
    """Every count >= 1, ``size`` within ``size_range`` (pixels, inclusive), ``seed`` >= 0."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f'{name} must be >= 1, got {value}')
    if not size_range[0] <= size <= size_range[1]:
        raise ValueError(f'size must be between {size_range[0]} and {size_range[1]} pixels, got {size}')
    if seed < 0:
        raise ValueError(f'seed must be >= 0, got {seed}')


def prepare_out_dir(out: Path, marker: str, clear: Callable[[Path], None], arg: str = 'out') -> None:
    """Refuse a file, or a non-empty folder without ``marker``; else call ``clear(out)`` on a previous
    synthetic set (it deletes the files that set wrote). ``arg`` names the option in the errors."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'{arg} {out} exists and is not a directory')
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / marker).is_file():
        raise FileExistsError(f'{arg} {out} is not empty and holds no {marker}: refusing to write a synthetic '
                              f'set into it (choose an empty or new directory)')
    clear(out)
