"""`napari-unet` command line: segment (and, as they land, train, models, demo).

Every failure the user can cause prints one line, ``napari-unet: error: ...``, on stderr and exits
non-zero without a traceback (``--debug`` shows it); outputs are written atomically and never over an
existing file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROG = "napari-unet"


class CLIError(Exception):
    """A user-facing failure: printed as one line."""


def _progress_bar(total: float, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False,
                bar_format="{desc} {percentage:3.0f}%|{bar:30}| {elapsed}<{remaining}")


def _outputs(inputs: list[Path], output: str | None) -> list[Path]:
    from .core.io import default_output

    if output is None:
        return [default_output(p) for p in inputs]
    out = Path(output)
    if len(inputs) > 1 or out.is_dir():
        if out.exists() and not out.is_dir():
            raise CLIError(f"-o '{out}' must be a folder when segmenting several inputs")
        return [out / default_output(p).name for p in inputs]
    return [out]


def cmd_segment(args: argparse.Namespace) -> int:
    from .core.io import read_image, write_labels

    inputs = [Path(p) for p in args.input]
    outputs = _outputs(inputs, args.output)
    for inp, out in zip(inputs, outputs):
        if out.exists() and not args.overwrite:
            raise CLIError(f"'{out}' exists; pass --overwrite to replace it")
        if inp.exists() and out.resolve() == inp.resolve():
            raise CLIError(f"output '{out}' would overwrite the input")
    from .api import load_model
    from .core.segment import segment_iter

    model = load_model(args.model)
    failures = 0
    for inp, out in zip(inputs, outputs):
        t0 = time.perf_counter()
        try:
            img = read_image(inp)
            gen = segment_iter(
                img.data, model, device=args.device, diameter=args.diameter, channel=args.channel,
                axes=args.axes or img.axes, tile=args.tile, link_iou=args.link_iou,
            )
            with _progress_bar(1.0, inp.name, not args.quiet) as bar:
                while True:
                    try:
                        p = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    bar.n = round(p.fraction, 4)
                    bar.refresh()
            write_labels(out, result.labels, overwrite=args.overwrite, axes=result.axes)
        except (ValueError, OSError) as exc:  # InputError, FileExistsError, ... : one line, go on
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        n = len(set(result.labels.ravel().tolist()) - {0}) if result.labels.ndim > 2 else int(result.labels.max())
        print(
            f"{inp.name}: {n} objects, {time.perf_counter() - t0:.1f} s, device {result.device}, "
            f"diameter {result.diameter:.1f} px -> {out}"
        )
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Segment microscopy images with a U-Net.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment images into instance labels (TIFF)")
    s.add_argument("input", nargs="+", help="TIFF/OME-TIFF, .npy or zarr")
    s.add_argument("-o", "--output", help="output TIFF (a folder for several inputs); default <stem>_labels.tif")
    s.add_argument("--model", default="bundled", help="bundled, a model file, or a saved version name")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--diameter", type=float, help="object diameter in px (estimated if omitted)")
    s.add_argument("--channel", type=int, help="channel index to segment (default: average channels)")
    s.add_argument("--axes", help="axis letters, e.g. ZYX, TYX, CYX (default: from the file or guessed)")
    s.add_argument("--tile", type=int, help="tile size in px (default 256)")
    s.add_argument("--link-iou", type=float, help="link objects across planes of a stack above this IoU")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_segment)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract is one line, no traceback
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
