"""Write a small synthetic nuScenes dataset that the unchanged nuscenes-devkit loads and evaluates.

    python tools/make_synthetic_nuscenes.py --out data/synthetic_nuscenes
    python tools/make_synthetic_nuscenes.py --out DIR --version v1.0-test --samples-per-scene 4
    python tools/make_synthetic_nuscenes.py --out DIR_B --rig focal=1.2,height=0.3,pitch=5,roll=1 \
        --preview DIR_B/preview.png
    python tools/make_synthetic_nuscenes.py --out DIR_C \
        --rig-ranges focal=0.9:1.1,height=-0.2:0.2,pitch=-2:2,roll=-1:1   # a rig per scene

Writes ``DIR/<version>/`` (13 tables), ``DIR/maps/`` and ``DIR/samples/``; then
``NuScenes(version, dataroot=DIR)`` works.  Tokens and annotations depend only on --seed,
--version and --samples-per-scene, so ``--rig`` / ``--rig-ranges`` / ``--image-scale`` re-render the
same scenes.  ``--rig-ranges`` draws each listed key per scene, uniformly in lo:hi (the six cameras
of a scene share the draw); unlisted keys keep their ``--rig`` value (default nominal), and a key
may not be both drawn and set away from nominal by ``--rig``.  DIR/rig.json records the rig, or
the ranges and every scene's drawn rig.
See sf3d/datasets/synthetic_nuscenes.py for what is simulated.
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
    gen = load_generator('synthetic_nuscenes')
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='dataroot to write (DIR/<version>/, maps/, samples/)')
    parser.add_argument('--seed', type=int, default=0, help='scene content seed (default 0)')
    parser.add_argument('--samples-per-scene', type=int, default=10,
                        help='key frames per scene, 0.5 s apart (default 10, at least 2)')
    parser.add_argument('--image-scale', type=float, default=0.25,
                        help='image size and intrinsics relative to 1600x900 (default 0.25 -> 400x225)')
    parser.add_argument('--version', default='v1.0-mini', choices=gen.VERSIONS,
                        help='v1.0-mini (mini_train + mini_val scenes) or v1.0-test (no annotations)')
    parser.add_argument('--rig', default='focal=1.0,height=0.0,pitch=0.0,roll=0.0', type=_rig_type(gen),
                        help="camera rig change 'focal=S,height=DZ,pitch=DEG,roll=DEG' (any subset): fx, fy times S; "
                             'cameras DZ m higher; pitched DEG degrees about their x axis (positive = looking down); '
                             'rolled DEG degrees about their optical axis (positive = image content turns '
                             'clockwise, as CameraRigAug)')
    parser.add_argument('--rig-ranges', default=None, type=_rig_type(gen, 'parse_rig_ranges'),
                        metavar='KEY=LO:HI,...',
                        help="a rig per scene, e.g. 'focal=0.9:1.1,height=-0.2:0.2,pitch=-2:2,roll=-1:1' (any "
                             'subset): each scene draws the listed keys uniformly in [LO, HI] (deterministic in '
                             '--seed, --version and the scene name); the other keys come from --rig')
    parser.add_argument('--preview', default=None, metavar='PNG',
                        help='also save the six views of one sample with the devkit-projected GT boxes')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def _rig_type(gen, function: str = 'parse_rig'):
    def parse(text: str):
        try:
            return getattr(gen, function)(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = 'rig' if function == 'parse_rig' else 'rig ranges'
    return parse


def main(argv=None) -> int:
    args = parse_args(argv)
    gen = load_generator('synthetic_nuscenes')
    start = time.time()
    try:
        counts = gen.generate(args.out, seed=args.seed, samples_per_scene=args.samples_per_scene,
                              image_scale=args.image_scale, version=args.version, rig=args.rig,
                              rig_ranges=args.rig_ranges, progress=not args.no_progress)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f"wrote {args.version} to {args.out}: {counts['scenes']} scenes, {counts['samples']} samples, "
          f"{counts['annotations']} annotations of {counts['instances']} instances "
          f'in {time.time() - start:.1f} s')
    if args.preview:
        token = gen.save_preview(args.out, args.preview, version=args.version)
        print(f'preview of sample {token}: {args.preview}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
