"""Throughput: the write-up's recipe against faceattr's fast path (training, data path, scoring).

    python benchmarks/throughput.py [--size auto|small|full] [--device cpu|cuda] [--data ROOT] [--json FILE]

The same measurement as `faceattr bench` (faceattr.bench.run_benchmark): it prints a text table
and one JSON line; --json also writes the figures to FILE. On a GPU "auto" picks "full"
(ResNeXt50_32x4d frozen-6, batch 256, thousands of images); on a CPU "small".
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from faceattr.bench import SIZE_CHOICES, run_benchmark
from faceattr.fsutil import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZE_CHOICES, default="auto")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--data", default=None, help="a dataset ROOT to read; default: synthesise one")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = run_benchmark(size=args.size, device=args.device, data_root=args.data)
    if args.json is not None:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
