"""Write a small synthetic COCO-format detection / instance-segmentation set (shapes with masks).

    python tools/make_synthetic_coco.py --out data/synthetic_coco \
        [--num-train 200] [--num-val 50] [--size 128] [--seed 0]

Writes ``OUT/annotations/instances_{train,val}2017.json`` and ``OUT/{train,val}2017/*.jpg``
(the COCO 2017 layout, so ``CocoDetection``, pycocotools and mmdet read it unchanged).
See sf3d/datasets/synthetic_coco.py for what is drawn and how the annotations are made.
"""
import argparse
import sys
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # a script's folder is on sys.path; not when loaded by path (tests/tool_loader.py)
    sys.path.insert(0, HERE)
from synthetic_generator import load_generator  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    gen = load_generator('synthetic_coco')
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=f'OUT must be new, empty, or a previous synthetic set (it holds {gen.MARKER}); a previous set '
               f'is replaced. Any other non-empty directory is refused.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', required=True, help='output directory (e.g. data/synthetic_coco)')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=50, help='validation images')
    parser.add_argument('--size', type=int, default=128,
                        help=f'largest image side in pixels ({gen.MIN_SIZE}..{gen.MAX_SIZE}); width and height '
                             f'are drawn from [0.75 size, size]')
    parser.add_argument('--seed', type=int, default=0, help='random seed (>= 0)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gen = load_generator('synthetic_coco')
    start = time.time()
    try:
        counts = gen.generate(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size,
                              seed=args.seed, progress=not args.no_progress)
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    parts = ', '.join(f"{split}2017: {c['images']} images, {c['annotations']} annotations"
                      for split, c in counts.items())
    print(f'wrote synthetic COCO to {args.out} ({parts}) in {time.time() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
