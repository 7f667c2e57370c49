"""Write a tiny synthetic semantic-segmentation set in the ADE20K (ADEChallengeData2016) layout.

    python tools/make_synthetic_ade.py --out data/synthetic_ade \
        [--num-train 200] [--num-val 50] [--size 160] [--seed 0]

Writes ``OUT/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*_%08d.{jpg,png}``
and ``OUT/synthetic_ade.json``; ``ADE20KDataset(data_root='OUT/ADEChallengeData2016', ...)`` reads it
with the class names ``sf3d.datasets.synthetic_ade.CLASSES``. See sf3d/datasets/synthetic_ade.py
for what is drawn.
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
    gen = load_generator('synthetic_ade')
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=f'OUT must be new, empty, or a previous synthetic set (it holds {gen.MARKER}); a previous '
               f'set is replaced: the image and annotation files it wrote are deleted and rewritten. '
               f'Any other non-empty directory is refused.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', required=True, help='output directory (e.g. data/synthetic_ade)')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=50, help='validation images')
    parser.add_argument('--size', type=int, default=160,
                        help=f'largest image width in pixels ({gen.MIN_SIZE}..{gen.MAX_SIZE}); widths vary '
                             f'in [0.8, 1] x size, heights in [0.62, 0.9] x width')
    parser.add_argument('--seed', type=int, default=0, help='random seed (>= 0)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gen = load_generator('synthetic_ade')
    start = time.time()
    try:
        counts = gen.generate(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size,
                              seed=args.seed, progress=not args.no_progress)
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f"wrote {counts['training']} training and {counts['validation']} validation images of "
          f'{len(gen.CLASSES)} classes to {Path(args.out) / gen.DATASET_DIR} in {time.time() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
