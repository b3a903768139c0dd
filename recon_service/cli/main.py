"""``recon``: run, score and inspect reconstructions from a terminal.

    recon run PHOTOS_DIR --out OUT [--preset preview|balanced|high] [--option KEY=VALUE ...]
              [--<stage>.<field> VALUE ...] [--json]
    recon eval OUT [--gt SCENE_DIR_OR_NAME] [--photometric] [--held-out-from FULL_OUT] [--json]   # writes OUT/eval.json
    recon fixtures list | recon fixtures make NAME [--out DIR]
    recon options [--json]
    recon serve

The per-option flags (``--dense.max_image_size 640``) are generated from ``pipelines.options``,
like ``GET /options``; ``--option dense.max_image_size=640`` is the same thing.

Exit codes, for scripts:
    0    success
    1    internal error (a bug; -vv shows the traceback)
    2    usage error: bad arguments, unknown preset or option, invalid option value, missing folder
    3    invalid input: the photos cannot be used (too few, unreadable, ...)
    4    the reconstruction failed in a stage
    130  cancelled (Ctrl-C or SIGTERM: the run stops cleanly at the next check, within seconds)
Errors are one line on stderr. Progress goes to stderr, results (tables, JSON) to stdout.
"""


from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.errors import Cancelled, InvalidInput, InvalidOptions, ReconstructionFailed
from pipelines.options import DEFAULT_PRESET, PRESETS, build_options, options_schema
from pipelines.progress import CancelToken
from recon_service.cli.printing import ProgressPrinter, eval_summary, run_summary, table

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INVALID_INPUT, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 2, 3, 4, 130
OPTION_DEST = "option:"
"""Prefix of the argparse ``dest`` of each generated option flag."""


class UsageError(Exception):
    """A mistake on the command line that argparse itself cannot see."""


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--<stage>.<field>`` flag per option of ``pipelines.options``, grouped by stage."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for entry in options_schema()["options"]:
        stage = entry["stage"]
        if stage not in groups:
            groups[stage] = parser.add_argument_group(f"{stage} options")
        bounds = []
        if "choices" in entry:
            bounds.append("one of " + ", ".join(entry["choices"]))
        if "min" in entry or "max" in entry:
            bounds.append(f"{entry.get('min', '')}..{entry.get('max', '')}")
        bounds.append(f"default {entry['default']}")
        detail = " (" + "; ".join(bounds) + ")"
        metavar = "{" + ",".join(entry["choices"]) + "}" if "choices" in entry else entry["type"].upper()
        groups[stage].add_argument(f"--{entry['name']}", dest=OPTION_DEST + entry["name"], metavar=metavar, help=entry["help"] + detail)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="Photos in, textured GLB out: run, score and inspect reconstructions.", epilog="Exit codes: 0 ok, 2 usage, 3 invalid photos, 4 reconstruction failed, 130 cancelled.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log pipeline steps to stderr (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="reconstruct a folder of photos", description="Reconstruct PHOTOS_DIR into OUT (model.glb, sparse/, points.ply, preview.png, report.json).")
    run.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR")
    run.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder (created)")
    run.add_argument("--preset", default=DEFAULT_PRESET, metavar="|".join(PRESETS), help=f"option preset (default {DEFAULT_PRESET})")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="set one option, e.g. dense.max_image_size=640 (repeatable)")
    run.add_argument("--json", action="store_true", help="print report.json instead of the summary table")
    _add_option_flags(run)

    ev = sub.add_parser(
        "eval", help="score a run: against a fixture's ground truth, or by rendering it from the photos' cameras",
        description="Score the run folder OUT; writes OUT/eval.json. --gt needs a fixture scene; --photometric and --held-out-from need no ground truth.",
    )  # fmt: skip
    ev.add_argument("out", type=Path, metavar="OUT")
    ev.add_argument("--gt", metavar="SCENE_DIR", help="fixture scene folder, or a scene name (see `recon fixtures list`)")
    ev.add_argument("--photometric", action="store_true", help="render the textured model from every registered camera: PSNR, SSIM and coverage against the photos")
    ev.add_argument("--held-out-from", type=Path, metavar="FULL_OUT",
                    help="OUT was run without some photos: render them at their poses from FULL_OUT (a run on all photos) and score them")  # fmt: skip
    ev.add_argument("--json", action="store_true", help="print eval.json instead of the table")

    fx = sub.add_parser("fixtures", help="list or render fixture scenes with ground truth")
    fx_sub = fx.add_subparsers(dest="fixtures_command", required=True, metavar="ACTION")
    fx_sub.add_parser("list", help="list the named scenes")
    make = fx_sub.add_parser("make", help="render a scene (or find its committed/cached copy); prints its folder")
    make.add_argument("name", metavar="NAME")
    make.add_argument("--out", type=Path, default=None, metavar="DIR", help="render into DIR instead of the cache")

    opts = sub.add_parser("options", help="show the presets and every option")
    opts.add_argument("--json", action="store_true", help="print the same JSON as GET /options")
    sub.add_parser("serve", help="start the HTTP service (same as recon-service)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    for dest, value in vars(args).items():
        if dest.startswith(OPTION_DEST) and value is not None:
            overrides[dest[len(OPTION_DEST) :]] = value
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import reconstruct

    if not args.photos_dir.is_dir():
        raise UsageError(f"photos folder {args.photos_dir} does not exist or is not a folder")
    options = build_options(args.preset, _overrides(args))
    cancel = CancelToken()
    printer = ProgressPrinter(sys.stderr, sys.stderr.isatty())
    outcome: dict[str, Any] = {}

    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = reconstruct(args.photos_dir, args.out, options, printer, cancel)
        except BaseException as exc:  # handed to the main thread, which maps it to an exit code
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="reconstruct", daemon=True)
    from pipelines.stack import import_native_libraries

    import_native_libraries()  # pycolmap's import takes SIGTERM over: import it before our handler
    previous = signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    worker.start()
    try:
        # Wait on an Event, not Thread.join: a KeyboardInterrupt inside join() can leave the
        # thread looking finished while it still runs.
        while not done.is_set():
            try:
                done.wait(0.2)
            except KeyboardInterrupt:
                if cancel.cancelled:  # second Ctrl-C: stop now, whatever state the files are in
                    sys.stderr.write("\nrecon: aborted\n")
                    os._exit(EXIT_CANCELLED)
                cancel.cancel()
                sys.stderr.write("\nrecon: cancelling (Ctrl-C again to abort at once)\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
        printer.close()
    if "error" in outcome:
        raise outcome["error"]
    report = outcome["result"].report or json.loads((args.out / "report.json").read_text())
    print(json.dumps(report, indent=2, default=str) if args.json else run_summary(report, args.out.resolve()))
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from fixtures.scenes import SCENES, make_scene
    from pipelines import evaluate, photometric

    if not args.out.is_dir():
        raise UsageError(f"run folder {args.out} does not exist")
    if args.gt is None and not args.photometric and args.held_out_from is None:
        raise UsageError("say what to score: --gt SCENE (a fixture's ground truth), --photometric (renderings against the photos) or --held-out-from FULL_OUT")
    if args.held_out_from is not None and not args.held_out_from.is_dir():
        raise UsageError(f"--held-out-from: run folder {args.held_out_from} does not exist")
    data: dict[str, object] = {}
    if args.gt is not None:
        gt = Path(args.gt)
        if not gt.is_dir():
            if args.gt not in SCENES:
                raise UsageError(f"--gt {args.gt!r} is neither a scene folder nor a scene name ({', '.join(SCENES)})")
            gt = make_scene(args.gt)
        if not (gt / "gt" / "cameras.json").is_file():
            raise UsageError(f"{gt} is not a fixture scene (no gt/cameras.json)")
        data = evaluate.evaluate(args.out, gt).to_dict()
    if args.photometric:
        data["photometric"] = photometric.score_fit(args.out).to_dict()
    if args.held_out_from is not None:
        data["held_out"] = photometric.score_held_out(args.out, args.held_out_from).to_dict()
    evaluate.write_dict(data, args.out / "eval.json")
    print(json.dumps(data, indent=2) if args.json else eval_summary(data))
    return EXIT_OK


def _cmd_fixtures(args: argparse.Namespace) -> int:
    from fixtures.scenes import SCENES, make_scene, scene_dir

    if args.fixtures_command == "list":
        rows = []
        for name, spec in SCENES.items():
            where = "committed" if spec.committed else ("cached" if (scene_dir(name) / "scene.json").exists() else "on demand")
            rows.append((name, f"{spec.n_photos + spec.stray_photos:>3} photos {spec.width}x{spec.height:<5} {where:<9}  {spec.description}"))
        print(table(rows))
        return EXIT_OK
    if args.name not in SCENES:
        raise UsageError(f"unknown scene {args.name!r}; `recon fixtures list` shows the names")
    print(make_scene(args.name, args.out))
    return EXIT_OK


def _cmd_options(args: argparse.Namespace) -> int:
    schema = options_schema()
    if args.json:
        print(json.dumps(schema, indent=2))
        return EXIT_OK
    print("Presets: " + ", ".join(f"{p}{' (default)' if p == schema['default_preset'] else ''}" for p in schema["presets"]))
    for entry in schema["options"]:
        per_preset = "  ".join(f"{p}={schema['presets'][p][entry['name']]}" for p in schema["presets"])
        limits = f" [{entry.get('min', '')}..{entry.get('max', '')}]" if "min" in entry or "max" in entry else ""
        choices = f" {{{', '.join(entry['choices'])}}}" if "choices" in entry else ""
        print(f"\n{entry['name']} ({entry['type']}{limits}{choices})\n    {entry['help']}\n    {per_preset}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from recon_service.api.server import main as serve

    return serve()


COMMANDS = {"run": _cmd_run, "eval": _cmd_eval, "fixtures": _cmd_fixtures, "options": _cmd_options, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recon`` console script; returns the exit code (see module doc)."""
    args = build_parser().parse_args(argv)  # exits with 2 on a usage error, as argparse does
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (UsageError, InvalidOptions) as exc:
        print(f"recon {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidInput as exc:
        print(f"recon {args.command}: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except ReconstructionFailed as exc:
        print(f"recon {args.command}: reconstruction failed in {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # stdout closed early (`recon options | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (Cancelled, KeyboardInterrupt):
        print(f"recon {args.command}: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # a bug: one line for the user, the traceback with -vv
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"recon {args.command}: internal error: {type(exc).__name__}: {exc} (run with -vv for details)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
