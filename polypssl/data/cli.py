"""``polypssl data {split,check,download,synth}``."""

from __future__ import annotations

import argparse
import time

from polypssl.data.sources import DATASET_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    names = ", ".join(DATASET_NAMES)

    p = sub.add_parser("split", help="write the protocol's train/val/test file names as JSON")
    p.add_argument("name", metavar="NAME", help=f"labelled dataset ({names})")
    p.add_argument("root", metavar="ROOT", help="dataset folder (or its parent; a Hub id or parquet for hf)")
    p.add_argument("--out", required=True, metavar="FILE", help="JSON file to write")
    _columns(p)

    p = sub.add_parser("check", help="report every problem of a dataset copy; exit 1 if any")
    p.add_argument("name", metavar="NAME", help=f"dataset ({names})")
    p.add_argument("root", metavar="ROOT", help="dataset folder (or its parent)")
    _columns(p)

    p = sub.add_parser("download", help="download and unpack Kvasir-SEG or Hyperkvasir-unlabelled")
    p.add_argument("name", metavar="NAME", help="kvasir-seg or hyperkvasir-unlabelled (others print how to get them)")
    p.add_argument("dest", metavar="DEST", help="folder to unpack into")
    p.add_argument("--url", default=None, help="mirror URL of the archive")
    p.add_argument("--sha256", default=None, help="expected sha256 of the archive")

    p = sub.add_parser("synth", help="write the synthetic kvasir-seg, cvc-clinicdb and hyperkvasir-unlabelled sets")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=("small", "full", "tiny"), default="small")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")


def _columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", default="image", help="image column of an hf dataset")
    p.add_argument("--mask-column", default="annotation", help="mask column of an hf dataset")


def run(args: argparse.Namespace) -> int:
    return {"split": _split, "check": _check, "download": _download, "synth": _synth}[args.data_command](args)


def _split(args: argparse.Namespace) -> int:
    from polypssl.data.sources import open_labelled
    from polypssl.runs import write_json

    out = {}
    for split in ("train", "val", "test"):
        source = open_labelled(args.name, args.root, split=split, image_column=args.image_column,
                               mask_column=args.mask_column)
        out[split] = list(source.names)
    write_json(args.out, out)
    print(f"{args.name}: train {len(out['train'])}, val {len(out['val'])}, test {len(out['test'])} -> {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from polypssl.data.check import check_dataset

    report = check_dataset(args.name, args.root, image_column=args.image_column, mask_column=args.mask_column,
                           progress=True)
    for note in getattr(report, "notes", []):
        print(f"note: {note}")
    counts = ", ".join(f"{v} {k}" for k, v in getattr(report, "counts", {}).items())
    if report:
        for problem in report:
            print(problem)
        suffix = f" ({counts})" if counts else ""
        print(f"{args.name} at {args.root}: {len(report)} problem(s){suffix}")
        return 1
    print(f"{args.name} at {args.root}: OK ({counts})")
    return 0


def _download(args: argparse.Namespace) -> int:
    from polypssl.data.downloads import download

    folder = download(args.name, args.dest, url=args.url, sha256=args.sha256)
    print(f"{args.name}: {folder} (sha256 recorded in {args.dest}/{args.name}.download.json)")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from polypssl.data.synth import synthesize

    start = time.perf_counter()
    paths = synthesize(args.out, seed=args.seed, scale=args.scale, workers=args.workers)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
