"""Create nuScenes info files (mmdet3d 1.x 'v2' format), or convert a legacy one.

    python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-trainval \
        --out-dir data/nuscenes [--extra-tag nuscenes]
    python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-test --out-dir data/nuscenes
    python tools/create_data.py nuscenes --update-infos OLD.pkl [--out NEW.pkl] [--legacy-convention 0.17|1.0]

The first writes ``{tag}_infos_train.pkl`` and ``{tag}_infos_val.pkl`` (v1.0-mini: from the
mini_train / mini_val scenes), the second ``{tag}_infos_test.pkl``. The third converts a file
written by mmdet3d 0.17 or 1.0rc (``{'infos': [...]}``) into ``OLD_v2.pkl`` (or ``--out``); the
box convention is detected from the car boxes unless ``--legacy-convention`` is given.
See sf3d/datasets/nuscenes_info.py for the format.
"""
import argparse
import sys
import time

from sf3d.datasets.nuscenes_info import VERSIONS, create_nuscenes_infos, update_legacy_infos


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', choices=['nuscenes'], help='dataset (only nuscenes)')
    parser.add_argument('--root-path', help='nuScenes dataroot (holds <version>/, maps/, samples/)')
    parser.add_argument('--version', default='v1.0-trainval', help=f'one of {", ".join(VERSIONS)} '
                        '(default v1.0-trainval)')
    parser.add_argument('--out-dir', help='where the info files go (default: --root-path)')
    parser.add_argument('--extra-tag', default='nuscenes', help='file name prefix (default nuscenes)')
    parser.add_argument('--update-infos', metavar='OLD.pkl', help='convert a legacy (0.17 / 1.0rc) info file')
    parser.add_argument('--out', metavar='NEW.pkl', help='with --update-infos: output path (default OLD_v2.pkl)')
    parser.add_argument('--legacy-convention', choices=['0.17', '1.0'],
                        help='with --update-infos: box convention of the old file when it cannot be detected '
                             '(0.17: [x, y, z, w, l, h, -yaw - pi/2]; 1.0: [x, y, z, l, w, h, yaw])')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    args = parser.parse_args(argv)
    if args.update_infos is None and args.root_path is None:
        parser.error('give --root-path (to create info files) or --update-infos OLD.pkl (to convert one)')
    if args.update_infos is None and (args.out or args.legacy_convention):
        parser.error('--out and --legacy-convention only apply with --update-infos')
    if args.update_infos is not None and args.root_path is not None:
        parser.error('--update-infos converts a file on its own; do not combine it with --root-path')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        if args.update_infos is not None:
            update_legacy_infos(args.update_infos, args.out, convention=args.legacy_convention,
                                progress=not args.no_progress)
            return 0
        paths = create_nuscenes_infos(args.root_path, args.version, args.out_dir or args.root_path,
                                      extra_tag=args.extra_tag, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {", ".join(paths)} in {time.time() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
