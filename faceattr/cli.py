"""`faceattr` command line: one subcommand per pipeline stage, each a thin call into the library.

Modules are imported inside the handlers so `faceattr --help` stays fast and torch is loaded
only by the stages that need it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from faceattr.run.config import PRESETS, SCORE_BATCH_SIZES, ConfigError, RunConfig, field_kind, save_or_check
from faceattr.run.layout import RunLayout


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


def _run_config(run_dir: Path, overrides: dict[str, Any]) -> RunConfig:
    """The saved config of RUN with the flags given on this command line applied, checked."""
    base = RunConfig.load(run_dir).to_dict() if RunLayout(run_dir).config.exists() else {}
    config = RunConfig.from_dict({**base, **overrides}, source="command line")
    return save_or_check(config, run_dir)


def _print(result: Any) -> None:
    if result is not None:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))


# -- handlers ---------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> Any:
    from faceattr.synth.files import generate

    return generate(Path(args.out), n=args.n, seed=args.seed, base=Path(args.base) if args.base else None,
                    corrupt=args.corrupt)


def cmd_download(args: argparse.Namespace) -> Any:
    from faceattr.data.download import acquire

    return acquire(args.source, Path(args.root))


def cmd_split(args: argparse.Namespace) -> Any:
    from faceattr.data.split import make_split

    run_dir = Path(args.out)
    overrides = _config_overrides(args) | {"root": args.root, "split": args.strategy, "seed": args.seed}
    config = _run_config(run_dir, overrides)
    return make_split(Path(config.root), config.split, config.seed, run_dir)


def cmd_train(args: argparse.Namespace) -> Any:
    from faceattr.engine.distributed import launch_epoch  # one process, or DDP over the visible GPUs

    run_dir = Path(args.run)
    return launch_epoch(run_dir, args.epoch, _run_config(run_dir, _config_overrides(args)))


def cmd_evaluate(args: argparse.Namespace) -> Any:
    from faceattr.engine.evaluate import evaluate_epoch

    epoch = args.epoch if args.epoch == "best" else int(args.epoch)
    return evaluate_epoch(Path(args.run), epoch, args.split, device=args.device)


def cmd_select(args: argparse.Namespace) -> Any:
    from faceattr.engine.selection import select_best

    return select_best(Path(args.run))


def cmd_predict(args: argparse.Namespace) -> Any:
    from faceattr import settings
    from faceattr.data.access import data_roots
    from faceattr.engine.predict import predict

    return predict(
        _model_file(args.model), Path(args.images), Path(args.out),
        scores=args.scores, batch_size=args.batch_size or SCORE_BATCH_SIZES.get(args.preset, 128), device=args.device,
        roots=data_roots() if settings.data_roots() else None,  # the DAG's rule, where it is configured
    )


def cmd_fit(args: argparse.Namespace) -> Any:
    from faceattr.pipeline import fit

    run_dir = Path(args.run)
    return fit(_run_config(run_dir, _config_overrides(args)), run_dir)


def cmd_report(args: argparse.Namespace) -> Any:
    from faceattr.run.report import write_report

    return {"report": str(write_report(Path(args.run)))}


def cmd_cache(args: argparse.Namespace) -> Any:
    from faceattr.data.cache import build_cache

    return build_cache(Path(args.run))


def cmd_runs(args: argparse.Namespace) -> Any:
    from faceattr.store.store import Store
    from faceattr.views import format_run, format_runs

    with Store.from_env() as store:
        run_id = getattr(args, "run_id", None)
        print(format_run(store, run_id) if run_id else format_runs(store))
    return None


def cmd_models(args: argparse.Namespace) -> Any:
    import getpass

    from faceattr.store import registry
    from faceattr.store.store import Store
    from faceattr.views import format_models

    actor = f"{getpass.getuser()} (faceattr models {args.models_command or 'list'})"
    with Store.from_env() as store:
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
    from faceattr.data.versions import prune
    from faceattr.store.store import Store

    with Store.from_env() as store:
        used = store.data_versions_in_use()
    result = prune(Path(args.root), used, apply=args.yes)
    verb = "removed" if args.yes else "would remove (add --yes to remove them)"
    print(f"{args.root}: current version {result['current']}; kept (used by runs in the store) "
          f"{', '.join(result['kept']) or 'none'}; {verb}: {', '.join(result['unused']) or 'nothing'}")
    return None


def _model_file(model: str) -> Path:
    """--model: a model.pt path, or `champion`/a run id resolved in the run store."""
    if model.endswith(".pt") or Path(model).exists():
        return Path(model)
    from faceattr.store import registry
    from faceattr.store.store import Store

    with Store.from_env() as store:
        return Path(registry.resolve(store, model)["path"])


def cmd_bench(args: argparse.Namespace) -> Any:
    from faceattr.bench import run_benchmark

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
    p.add_argument("--model", required=True, help="RUN/model.pt, or 'champion' or a run id from the run store")
    p.add_argument("--images", required=True, help="a folder or a .zip of images")
    p.add_argument("--out", required=True, help="the CSV to write")
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
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:  # OSError: a full disk, a directory as --out
        print(f"faceattr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"faceattr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        database = sys.modules.get("sqlalchemy.exc")  # loaded only by the commands that open the run store
        if database is None or not isinstance(exc, database.SQLAlchemyError):
            raise
        # A locked SQLite file, a dropped PostgreSQL connection, a refused write: the driver's words.
        print(f"faceattr {args.command}: error: run store: {type(exc).__name__}: {getattr(exc, 'orig', None) or exc}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
