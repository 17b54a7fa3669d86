"""`faceattr` command line: one subcommand per pipeline stage, each a thin call into the library.

The library modules are imported inside the handlers so `faceattr --help` stays fast: torch,
pandas and SQLAlchemy are loaded only by the stages that need them. Every refusal is one line on
stderr and exit status 2; a closed pipe (`faceattr runs | head -1`) ends quietly.
"""
from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from faceattr import settings
from faceattr.data.access import check_path, data_roots
from faceattr.run.config import (
    PRESETS, SCORE_BATCH_SIZES, ConfigError, RunConfig, check_continues, check_device, field_kind, save_or_check,
    started,
)
from faceattr.run.layout import RunLayout
from faceattr.run.lock import run_lock

# --model: the registry's keyword for the current champion, and the prefix that names a run id.
CHAMPION = "champion"
RUN_PREFIX = "run:"
MODEL_HELP = ("a model file (a path with a '/' or ending in .pt, e.g. ./runA/model.pt), 'champion' (always "
              "the run store's champion), or a run id in the run store (a bare name, or run:ID)")


def _add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per RunConfig field (--batch-size, --lr, ...); unset flags keep saved values."""
    group = parser.add_argument_group("run configuration (saved in RUN/config.json)")
    group.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="named settings under the flags given: " +
                            "; ".join(f"{name}: {values}" for name, values in PRESETS.items()))
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = field_kind(f)
        help_text = f"default {f.metadata.get('default_help', repr(f.default))}"
        if "choices" in f.metadata:
            help_text = f"{'|'.join(f.metadata['choices'])}; {help_text}"
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            caster = {"int": int, "float": float}.get(kind, str)
            group.add_argument(flag, dest=f.name, type=caster, default=None, help=help_text)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, over the --preset's values."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return {**PRESETS.get(getattr(args, "preset", None), {}), **given}


def _config(run_dir: Path, overrides: dict[str, Any]) -> RunConfig:
    """The saved config of RUN with the flags given on this command line applied, checked against
    the run's work so far; nothing is written."""
    layout = RunLayout(run_dir)
    # A folder without a split or an epoch takes the command line's config whole: what it saved led nowhere.
    base = RunConfig.load(run_dir).to_dict() if layout.config.exists() and started(layout) else {}
    config = RunConfig.from_dict({**base, **overrides}, source="command line")
    return check_continues(config, run_dir)


def _print(result: Any) -> None:
    if result is not None:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))


# -- handlers ---------------------------------------------------------------------------------
# The handlers' imports load torch, pandas or SQLAlchemy: inside them, to keep `faceattr --help` light.
def cmd_synth(args: argparse.Namespace) -> Any:
    from faceattr.synth.files import generate  # when run: --help stays light

    _in_range("--n", args.n, 1, 10**7)
    _in_range("--seed", args.seed, 0, 2**32 - 1)
    return generate(Path(args.out), n=args.n, seed=args.seed, base=Path(args.base) if args.base else None,
                    corrupt=args.corrupt)


def cmd_download(args: argparse.Namespace) -> Any:
    from faceattr.data.download import acquire  # when run: --help stays light

    return acquire(args.source, Path(args.root))


def cmd_split(args: argparse.Namespace) -> Any:
    from faceattr.data.split import make_split  # when run: --help stays light
    from faceattr.pipeline import check_runnable  # when run: --help stays light

    run_dir = Path(args.out)
    overrides = _config_overrides(args) | {"root": args.root, "split": args.strategy, "seed": args.seed}
    config = _config(run_dir, overrides)
    check_runnable(config)  # before anything is written
    with run_lock(run_dir, "faceattr split", create=True):
        config = check_continues(config, run_dir)  # again, now that no one else works in the folder
        result = make_split(Path(config.root), config.split, config.seed, run_dir)
        config.save(run_dir)  # config.json only beside a split made with it
    return result


def cmd_train(args: argparse.Namespace) -> Any:
    from faceattr.engine.distributed import launch_epoch  # one process, or DDP over the visible GPUs

    run_dir = Path(args.run)
    with run_lock(run_dir, f"faceattr train --epoch {args.epoch}"):
        if not RunLayout(run_dir).split.is_file():
            raise FileNotFoundError(f"{RunLayout(run_dir).split}: not found; run 'faceattr split' first")
        config = _config(run_dir, _config_overrides(args))
        check_device(config.device)
        return launch_epoch(run_dir, args.epoch, save_or_check(config, run_dir))


def cmd_evaluate(args: argparse.Namespace) -> Any:
    from faceattr.engine.evaluate import evaluate_epoch  # when run: --help stays light

    if args.epoch != "best" and not args.epoch.isdigit():
        raise ValueError(f"--epoch: {args.epoch!r} is not an epoch number or 'best'")
    epoch = args.epoch if args.epoch == "best" else int(args.epoch)
    with run_lock(args.run, f"faceattr evaluate --epoch {args.epoch} --split {args.split}"):
        return evaluate_epoch(Path(args.run), epoch, args.split, device=args.device)


def cmd_select(args: argparse.Namespace) -> Any:
    from faceattr.engine.selection import select_best  # when run: --help stays light

    with run_lock(args.run, "faceattr select"):
        return select_best(Path(args.run))


def cmd_predict(args: argparse.Namespace) -> Any:
    from faceattr.engine.predict import predict  # when run: --help stays light

    if args.batch_size is not None:
        _in_range("--batch-size", args.batch_size, 1, 65536)
    images, out = Path(args.images), Path(args.out)
    roots = None
    if settings.data_roots():  # the DAG's rule, where it is configured: the paths given, then every file
        roots = data_roots()
        images = check_path(images.absolute(), "--images", roots=roots)
        out = check_path(out.absolute(), "--out", roots=roots)
    model = _model_file(args.model)

    def run() -> dict:
        return predict(model, images, out, scores=args.scores, roots=roots, device=args.device,
                       batch_size=args.batch_size or SCORE_BATCH_SIZES.get(args.preset, 128))

    run_dir = _run_folder_of(out)
    if run_dir is None:
        return run()
    with run_lock(run_dir, "faceattr predict"):  # writing RUN/private_predictions.csv
        return run()


def cmd_fit(args: argparse.Namespace) -> Any:
    from faceattr.pipeline import fit  # takes the run folder's lock itself

    run_dir = Path(args.run)
    return fit(_config(run_dir, _config_overrides(args)), run_dir)


def cmd_report(args: argparse.Namespace) -> Any:
    from faceattr.run.report import write_report  # when run: --help stays light

    with run_lock(args.run, "faceattr report"):
        return {"report": str(write_report(Path(args.run)))}


def cmd_cache(args: argparse.Namespace) -> Any:
    from faceattr.data.cache import build_cache  # when run: --help stays light

    with run_lock(args.run, "faceattr cache"):
        return build_cache(Path(args.run))


def cmd_runs(args: argparse.Namespace) -> Any:
    from faceattr.store.store import Store  # when run: --help stays light
    from faceattr.views import format_run, format_runs  # when run: --help stays light

    with Store.from_env(create=False) as store:  # reading never creates a store
        run_id = getattr(args, "run_id", None)
        print(format_run(store, run_id) if run_id else format_runs(store))
    return None


def cmd_models(args: argparse.Namespace) -> Any:
    from faceattr.store import registry  # when run: --help stays light
    from faceattr.store.store import Store  # when run: --help stays light
    from faceattr.views import format_models  # when run: --help stays light

    actor = f"{getpass.getuser()} (faceattr models {args.models_command or 'list'})"
    with Store.from_env(create=args.models_command is not None) as store:  # listing never creates a store
        if args.models_command == "publish":
            from faceattr.engine.rescore import mean_accuracy_on  # torch: not for `faceattr --help`

            return registry.publish(store, Path(args.run), min_gain=args.min_gain, force=args.force, actor=actor,
                                    rescore=mean_accuracy_on, min_images=args.gate_min_images)
        if args.models_command == "promote":
            print(registry.promote(store, args.run_id, actor=actor)["message"])
        elif args.models_command == "rollback":
            print(registry.rollback(store, actor=actor)["message"])
        else:
            print(format_models(store))
    return None


def cmd_data(args: argparse.Namespace) -> Any:
    from faceattr.data.versions import prune  # when run: --help stays light
    from faceattr.store.store import Store  # when run: --help stays light

    with Store.from_env(create=False) as store:  # pruning reads which versions runs use; it records nothing
        used = store.data_versions_in_use()
    result = prune(Path(args.root), used, apply=args.yes)
    verb = "removed" if args.yes else "would remove (add --yes to remove them)"
    print(f"{args.root}: current version {result['current']}; kept (used by runs in the store) "
          f"{', '.join(result['kept']) or 'none'}; {verb}: {', '.join(result['unused']) or 'nothing'}")
    return None


def _model_file(model: str) -> Path:
    """--model by one rule that no local file can change (MODEL_HELP): `champion` is the registry's
    keyword, `run:ID` a run id; a name with a path separator or ending in .pt is a file; any other
    bare name is a run id (write ./NAME for a local file of that name)."""
    if model.startswith(RUN_PREFIX):
        name = model.removeprefix(RUN_PREFIX)
    elif model == CHAMPION:
        name = model
    elif model.endswith(".pt") or "/" in model or os.sep in model:
        return Path(model)
    else:
        name = model
    if not name:
        raise ValueError(f"--model: {model!r} names no run")
    from faceattr.store import registry  # SQLAlchemy: only for the commands that open the run store
    from faceattr.store.store import Store

    with Store.from_env(create=False) as store:
        return Path(registry.resolve(store, name)["path"])


def _run_folder_of(out: Path) -> Path | None:
    """The run folder whose private_predictions.csv `out` is, if it is one (predict refuses any
    other path inside a run folder)."""
    layout = RunLayout(out.parent)
    if out.name == layout.private_predictions.name and layout.config.is_file():
        return out.parent
    return None


def _in_range(flag: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{flag}: {value} is not between {low} and {high}")


def cmd_bench(args: argparse.Namespace) -> Any:
    from faceattr.bench import run_benchmark  # when run: --help stays light

    return run_benchmark(size=args.size, device=args.device, data_root=args.data)


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceattr", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("synth", cmd_synth, "write a synthetic CelebA-format dataset (demo and tests; not CelebA)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default=None, help="a synthetic dataset to extend: its images first, then --n new ones "
                   "of new identities (next week's data)")
    p.add_argument("--corrupt", choices=("flip", "shuffle"), default=None,
                   help="corrupt the new images' labels: flip every one, or shuffle them between the new images")

    p = command("download", cmd_download, "fetch, verify and extract CelebA into ROOT/celeba")
    p.add_argument("--source", required=True, help="a local folder, an http(s) mirror URL, or 'gdrive'")
    p.add_argument("--root", required=True)

    p = command("data", cmd_data, "data versions: 'data prune --root ROOT' lists (--yes: removes) those no run uses")
    data_sub = p.add_subparsers(dest="data_command", metavar="{prune}", required=True)
    prune = data_sub.add_parser("prune", help="list the data versions no run in the store uses; --yes removes them")
    prune.add_argument("--root", required=True)
    prune.add_argument("--yes", action="store_true", help="remove them (without it: only list them)")

    p = command("split", cmd_split, "split the dataset into train/val/test and start a run folder")
    p.add_argument("--root", required=True)
    p.add_argument("--strategy", choices=("random", "official", "identity"), default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the run folder")
    _add_config_flags(p, skip=("root", "split", "seed"))

    p = command("train", cmd_train, "train one epoch, from the previous epoch's checkpoint")
    p.add_argument("--run", required=True)
    p.add_argument("--epoch", type=int, required=True)
    _add_config_flags(p)

    p = command("evaluate", cmd_evaluate, "score an epoch's checkpoint on a split")
    p.add_argument("--run", required=True)
    p.add_argument("--epoch", required=True, help="an epoch number or 'best'")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--device", default=None)

    p = command("select", cmd_select, "pick the best validation epoch; write best.json and model.pt")
    p.add_argument("--run", required=True)

    p = command("predict", cmd_predict, "score a folder or zip of images into a CSV")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--images", required=True, help="a folder or a .zip of images")
    p.add_argument("--out", required=True, help="the .csv file to write (and <stem>.errors.csv beside it); not "
                   "inside --images or a run folder (RUN/private_predictions.csv excepted), and replacing only a "
                   "predictions CSV")
    p.add_argument("--scores", action="store_true", help="add the raw scores as columns")
    p.add_argument("--batch-size", type=int, default=None, help="default 128, or the --preset's")
    p.add_argument("--preset", choices=sorted(SCORE_BATCH_SIZES), default=None,
                   help="; ".join(f"{name}: batch {size}" for name, size in SCORE_BATCH_SIZES.items()))
    p.add_argument("--device", default=None)

    p = command("fit", cmd_fit, "split, train and validate every epoch, select, test, report: one process")
    p.add_argument("--run", required=True)
    _add_config_flags(p)

    p = command("report", cmd_report, "write RUN/report/ (plots, CSV, HTML)")
    p.add_argument("--run", required=True)

    p = command("cache", cmd_cache, "decode the run's images once into a memory-mapped uint8 cache")
    p.add_argument("--run", required=True)

    p = command("runs", cmd_runs, "list runs in the run store; 'runs show ID' shows one")
    runs_sub = p.add_subparsers(dest="runs_command", metavar="{show}")
    show = runs_sub.add_parser("show", help="per-epoch and per-attribute figures of one run")
    show.add_argument("run_id")

    p = command("models", cmd_models, "list published models (champion first, and why); publish, promote, rollback")
    models_sub = p.add_subparsers(dest="models_command", metavar="{publish,promote,rollback}")
    publish = models_sub.add_parser("publish", help="record RUN's tested model; promote it if it beats the champion")
    publish.add_argument("run", metavar="RUN", help="the run folder")
    publish.add_argument("--min-gain", type=float, default=0.0,
                         help="test mean accuracy it must gain over the champion (default 0: any gain)")
    publish.add_argument("--force", action="store_true", help="promote whatever the comparison says")
    publish.add_argument("--gate-min-images", type=int, default=200,
                         help="with a champion tested on other data: the least number of this run's test images "
                         "the champion never saw, to compare both on (default 200)")
    promote = models_sub.add_parser("promote", help="make RUN's model the champion by hand (does not re-score "
                                    "the standing set: trigger faceattr_score after)")
    promote.add_argument("run_id", metavar="RUN", help="a run id in the run store")
    models_sub.add_parser("rollback", help="give the championship back to the champion before this one, one "
                          "promotion at a time (does not re-score the standing set)")

    p = command("bench", cmd_bench, "measure the write-up recipe against faceattr's fast path")
    p.add_argument("--size", choices=("auto", "small", "full"), default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--data", default=None, help="a dataset ROOT to read; default: synthesise one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A background job of a script starts with SIGINT ignored; Ctrl-C or kill -INT must still stop it (130).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        _print(args.handler(args))
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
    except BrokenPipeError:  # `faceattr runs | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, as a command killed by the closed pipe
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:  # OSError: a full disk, a directory as --out
        _refuse(args.command, exc)
        return 2
    except KeyboardInterrupt:
        print(f"faceattr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        database = sys.modules.get("sqlalchemy.exc")  # loaded only by the commands that open the run store
        if database is None or not isinstance(exc, database.SQLAlchemyError):
            raise
        # A locked SQLite file, a dropped PostgreSQL connection, a refused write: the driver's first line.
        from faceattr.store.connection import one_line  # loaded already: sqlalchemy.exc is

        _refuse(args.command, f"run store: {one_line(exc)}")
        return 2
    return 0


def _refuse(command: str, error: BaseException | str) -> None:
    """One line on stderr: a message that spans lines (a driver's, a library's) is joined into one."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or repr(error)
    print(f"faceattr {command}: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
