"""How long faceattr.data.labels takes to parse the full official label files (the target: < 2 s each).

    python benchmarks/parse_labels.py [PATH_TO_list_attr_celeba.txt] [--repeat N]

The partition and identity files are timed too when they sit beside the attribute file.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy  # noqa: F401  (imported up front so the timings leave out the import cost)
import pandas  # noqa: F401

from faceattr.data.labels import read_attributes, read_identity, read_partition
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, PARTITION_FILE

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "celeba-annotations" / ATTR_FILE


def time_parse(parse, path: Path, repeat: int) -> tuple[list[float], int]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(parse(path))
        seconds.append(time.perf_counter() - started)
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT, help=f"default {DEFAULT}")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not args.path.is_file():
        parser.error(f"{args.path}: not found")

    targets = [(read_attributes, args.path)]
    for parse, name in ((read_partition, PARTITION_FILE), (read_identity, IDENTITY_FILE)):
        if (args.path.parent / name).is_file():
            targets.append((parse, args.path.parent / name))
    for parse, path in targets:
        seconds, rows = time_parse(parse, path, args.repeat)
        print(
            f"{parse.__name__}({path.name}): {rows:,} rows, {path.stat().st_size / 2**20:.1f} MiB; "
            f"best {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s over {args.repeat} runs"
        )


if __name__ == "__main__":
    main()
