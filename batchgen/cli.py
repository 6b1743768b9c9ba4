"""The command line: argparse, wiring, printing and exit codes. The only module that prints or exits.

The commands that talk HTTP, check videos or run jobs import that machinery (asyncio, aiohttp, PyAV, tqdm, the
runner, the simulator's server) when they run: ``validate``, ``plan`` and ``--help`` need none of it, and start in
a third of the time (0.25 s instead of 0.75 s here).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen import __version__
from batchgen.errors import BatchgenError, ExitCode, ManifestError, UsageError
from batchgen.jobs import Job, expand
from batchgen.manifest import MAX_JOBS, Manifest, load_manifest, rows_manifest
from batchgen.models import known_models, load_model
from batchgen.pricing import Plan, format_dollars, format_usd, make_plan, micros, usd
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.faults import KINDS, FaultPlan, parse_script
from batchgen.yamlsource import dump_yaml

if TYPE_CHECKING:
    from tqdm import tqdm

    from batchgen.launch import Target
    from batchgen.notify import RunNotices
    from batchgen.runner import Event, Runner, RunResult, RunSettings
    from batchgen.simulator.server import SimSettings

KEY_ENV = "SEGMIND_API_KEY"  # the default of --api-key-env
SIMULATOR_JOURNAL = "simulator.jsonl"  # the requests and ledger of a --simulate run's simulator, in its directory

EXIT_MEANINGS = {
    0: "all done",
    1: "some jobs failed (run, verify: some left bad; reconcile: the books differ)",
    2: "usage or manifest error",
    3: "stopped by the budget with jobs left",
    4: "stopped by the provider (auth, insufficient credits, model gone, host unreachable)",
    130: "interrupted",
}
# What each command can return, and two or three examples of it (its --help shows both).
COMMANDS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "validate": ((0, 2), ("batchgen validate manifests/demo.yaml", "batchgen validate shots/*.yaml")),
    "plan": (
        (0, 2),
        (
            "batchgen plan manifests/demo.yaml",
            "batchgen plan manifests/stills.yaml",
            "batchgen plan night.yaml --budget 25 --json",
        ),
    ),
    "run": (
        (0, 1, 2, 3, 4, 130),
        (
            "batchgen run manifests/demo.yaml --simulate",
            "SEGMIND_API_KEY=… batchgen run night.yaml --budget 25",
            "batchgen run night.yaml --budget 25 --deadline 07:00 --concurrency 8",
            "batchgen run night.yaml --budget 25 --notify https://hooks.slack.com/services/T0/B0/XXXX",
            "batchgen run night.yaml --state postgresql://batchgen:…@db.studio.lan/batchgen  (on each machine)",
        ),
    ),
    "status": (
        (0, 2),
        (
            "batchgen status manifests/demo.yaml",
            "batchgen status --out output/demo --json",
            "batchgen status --state postgresql://batchgen:…@db.studio.lan/batchgen",
        ),
    ),
    "account": (
        (0, 2),
        (
            "batchgen account budget 250 --per week --state postgresql://batchgen:…@db.studio.lan/batchgen",
            "BATCHGEN_STATE_URL=postgresql://… batchgen account budget off",
        ),
    ),
    "report": ((0, 2), ("batchgen report manifests/demo.yaml", "batchgen report --out output/demo --full")),
    "serve": (
        (0, 2),
        ("batchgen serve manifests/demo.yaml", "batchgen serve --out output/night --port 8000"),
    ),
    "reconcile": (
        (0, 1, 2, 4),
        ("batchgen reconcile night.yaml", "batchgen reconcile --out output/demo --simulate"),
    ),
    "retry": ((0, 2), ("batchgen retry night.yaml", "batchgen retry night.yaml --lost")),
    "verify": ((0, 1, 2), ("batchgen verify night.yaml", "batchgen verify night.yaml --repair")),
    "import": (
        (0, 2),
        (
            "batchgen import shots.csv > night.yaml",
            "batchgen import shots.jsonl --name night > night.yaml",
        ),
    ),
    "models": ((0, 2), ("batchgen models", "batchgen models veo-3", "batchgen models kling-3-standard-image2video")),
    "simulate": (
        (0, 2),
        ("batchgen simulate --latency-s 0", "batchgen simulate --fault-rate 0.25 --trickle 700:4 --seed 7"),
    ),
}


def exit_codes(codes: Sequence[int]) -> str:
    """The lines of the exit-code table for ``codes``."""
    return "exit codes:\n" + "".join(f"  {code:<4} {EXIT_MEANINGS[code]}\n" for code in codes)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default, where it has one worth saying and its text does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        unsaid = default is None or default is False or default in ([], "") or default == argparse.SUPPRESS
        if not action.option_strings or "default" in text or unsaid:
            return text
        return f"{text} (default {default})"


Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run batchgen with ``argv`` (default: the process's arguments) and return the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, with its usage (not the top level's)
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Handler = args.handler
    try:
        return handler(args)
    except ManifestError as exc:
        _print_problems(exc)
        return int(exc.exit_code)
    except BatchgenError as exc:
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        if not exc.said:
            say("error", str(exc))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        say("error", "interrupted")
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # `batchgen status | head`: the reader had enough
        sys.stderr.close()
        return int(ExitCode.OK)


def say(kind: str, message: str) -> None:
    """One line on stderr in batchgen's one voice (see ``voice``)."""
    print(voice(kind, message), file=sys.stderr, flush=True)


def voice(kind: str, message: str) -> str:
    """``batchgen: error: …`` or ``batchgen: warning: …``, the kind in colour on a terminal (none with ``NO_COLOR``
    set, or when stderr is a file or a pipe)."""
    label = f"{kind}:"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        label = f"\033[1;{COLOURS.get(kind, 0)}m{label}\033[0m"
    return f"batchgen: {label} {message}"


COLOURS = {"error": 31, "warning": 33}  # red, yellow (ANSI)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Run batches of paid video generations (Segmind: Kling 3.0 and its catalogue, from prompts or "
        "your own stills) overnight, within a hard budget, resumable after any failure.",
        epilog=exit_codes(sorted(EXIT_MEANINGS))
        + "\nexamples:\n  batchgen run manifests/demo.yaml --simulate\n  batchgen COMMAND --help",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error as well")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_validate(commands)
    _add_plan(commands)
    _add_run(commands)
    _add_status(commands)
    _add_account(commands)
    _add_report(commands)
    _add_serve(commands)
    _add_reconcile(commands)
    _add_retry(commands)
    _add_verify(commands)
    _add_import(commands)
    _add_models(commands)
    _add_simulate(commands)
    return parser


def _add_command(commands: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    codes, examples = COMMANDS[name]
    command: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + "".join(f"  {example}\n" for example in examples) + "\n" + exit_codes(codes),
        formatter_class=_Help,
    )
    command.set_defaults(handler=handler, parser=command)
    return command


def _add_max_jobs(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-jobs",
        type=int,
        default=MAX_JOBS,
        metavar="N",
        help=f"refuse a manifest that expands to more than N jobs (default {MAX_JOBS:,})",
    )


def _add_validate(commands: Any) -> None:
    command = _add_command(commands, "validate", "check manifests; print every problem as FILE:LINE:COL", _validate)
    command.add_argument("manifests", nargs="+", metavar="MANIFEST", help="YAML manifest files")
    _add_max_jobs(command)


def _add_plan(commands: Any) -> None:
    command = _add_command(commands, "plan", "list the jobs of a manifest and estimate their cost", _plan)
    command.add_argument("manifest", metavar="MANIFEST", help="YAML manifest file")
    command.add_argument("--budget", type=float, metavar="USD", help="budget to plan against (default: the manifest's)")
    command.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_max_jobs(command)


def _load(path: str, max_jobs: int) -> tuple[Manifest, list[Job]]:
    manifest = load_manifest(path, max_jobs=max_jobs)
    return manifest, expand(manifest, max_jobs=max_jobs)


def _plan_of(manifest: Manifest, jobs: list[Job], budget_usd: float | None) -> Plan:
    budget = budget_usd if budget_usd is not None else manifest.budget_usd
    triples = [(job.id, load_model(job.model), job.payload) for job in jobs]
    tables = {model.slug: manifest.price_table(model) for model in manifest.models}
    return make_plan(triples, tables, None if budget is None else micros(budget))


def _validate(args: argparse.Namespace) -> int:
    problems = []
    for path in args.manifests:
        try:
            manifest, jobs = _load(path, args.max_jobs)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        plan = _plan_of(manifest, jobs, None)
        shots = len(manifest.shots)
        print(
            f"{path}: ok: {shots} shot{'s' * (shots != 1)}, {len(jobs)} job{'s' * (len(jobs) != 1)}, "
            f"{plan.total_seconds} s of video, est. {format_usd(plan.total_micros)}"
        )
    if problems:
        raise ManifestError(problems)
    return int(ExitCode.OK)


def _plan(args: argparse.Namespace) -> int:
    if args.budget is not None and args.budget <= 0:
        raise UsageError("--budget must be more than 0")
    manifest, jobs = _load(args.manifest, args.max_jobs)
    plan = _plan_of(manifest, jobs, args.budget)
    if args.json:
        print(json.dumps(_plan_json(manifest, plan, _images_sent(manifest, jobs)), indent=2))
    else:
        print(_plan_table(manifest, plan, _images_sent(manifest, jobs)))
    return int(ExitCode.OK)


def _images_sent(manifest: Manifest, jobs: list[Job]) -> dict[str, str]:
    """Per job that sends a first-frame image: the image's file name, or its URL's."""
    from batchgen.images import first_frame, ref_sha

    names = {sha: Path(image.path).name for sha, image in manifest.local_images().items()}
    sent = {}
    for job in jobs:
        value = first_frame(job.payload, load_model(job.model))
        if value is not None:
            sha = ref_sha(value)
            sent[job.id] = names.get(sha, "a local image") if sha else value.rsplit("/", 1)[-1]
    return sent


def _plan_json(manifest: Manifest, plan: Plan, images: dict[str, str]) -> dict[str, Any]:
    return {
        "manifest": manifest.file,
        "name": manifest.name,
        "model": manifest.model.slug,
        "models": {
            slug: {"jobs": count, "estimate_usd": usd(money)} for slug, (count, money) in plan.by_model().items()
        },
        "jobs": [
            {
                "id": row.job_id,
                "model": row.model,
                "image": images.get(row.job_id),
                "duration_s": row.spec.seconds,
                "aspect_ratio": row.spec.aspect_ratio,
                "audio": row.spec.audio,
                "voice": row.spec.voice,
                "estimate_usd": usd(row.estimate_micros),
                "fits_budget": row.fits_budget,
            }
            for row in plan.rows
        ],
        "total": {
            "jobs": len(plan.rows),
            "seconds": plan.total_seconds,
            "estimate_usd": usd(plan.total_micros),
            "budget_usd": None if plan.budget_micros is None else usd(plan.budget_micros),
            "jobs_within_budget": plan.jobs_within_budget,
        },
    }


def _plan_table(manifest: Manifest, plan: Plan, images: dict[str, str]) -> str:
    width = max([len("job"), *(len(row.job_id) for row in plan.rows)])
    shown = max([len("image"), *(len(name) for name in images.values())]) if images else 0
    image_head = f"  {'image':<{shown}}" if images else ""
    lines = [f"{'job':<{width}}  {'secs':>4}  {'aspect':<6}  {'audio':<5}{image_head}  {'estimate':>9}"]
    for row in plan.rows:
        sound = "voice" if row.spec.voice else "yes" if row.spec.audio else "no"
        mark = "" if row.fits_budget else "  over budget"
        image = f"  {images.get(row.job_id, '-'):<{shown}}" if images else ""
        lines.append(
            f"{row.job_id:<{width}}  {row.spec.seconds:>4}  {row.spec.aspect_ratio or 'image':<6}  {sound:<5}{image}  "
            f"{format_usd(row.estimate_micros):>9}{mark}"
        )
    lines.append("")
    models = plan.by_model()
    if len(models) > 1:
        slug_width = max(len(slug) for slug in models)
        for slug, (count, money) in models.items():
            lines.append(f"{slug:<{slug_width}}  {count:>6} job{'s' * (count != 1):<1}  {format_usd(money):>11}")
        lines.append("")
    titles = ", ".join(load_model(slug).title for slug in models) or manifest.model.title
    lines.append(
        f"{len(plan.rows)} jobs, {plan.total_seconds} s of video, estimated {format_usd(plan.total_micros)} ({titles})"
    )
    if plan.budget_micros is not None:
        lines.append(f"budget {format_usd(plan.budget_micros)}: {plan.jobs_within_budget} of {len(plan.rows)} jobs fit")
    return "\n".join(lines)


def _add_import(commands: Any) -> None:
    command = _add_command(
        commands,
        "import",
        "print a manifest made from a CSV or JSONL shot list (save it next to that file); every problem as "
        "FILE:LINE:COL",
        _import_rows,
    )
    command.add_argument(
        "rows",
        metavar="FILE",
        help="a .csv (a header line naming the columns, then one shot a line) or a .jsonl (one JSON object a line)",
    )
    command.add_argument("--name", metavar="NAME", help="the run's name (default: made from the file's name)")
    _add_max_jobs(command)


def _import_rows(args: argparse.Namespace) -> int:
    manifest = rows_manifest(args.rows, name=args.name, max_jobs=args.max_jobs)
    count = len(manifest.shots)
    print(f"# {count} shot{'s' * (count != 1)} of {Path(args.rows).name}, by `batchgen import`")
    if manifest.local_images():  # paths are as the rows wrote them, relative to the rows file's folder
        folder = Path(args.rows).resolve().parent
        print(f"# its local images are relative to {folder}: save this manifest there (or use shots_from: instead)")
    print(dump_yaml(dict(manifest.data)), end="")
    return int(ExitCode.OK)


def _print_problems(error: ManifestError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    count = len(error.problems)
    say("error", f"{count} problem{'s' * (count != 1)} found; nothing was run")


def _add_models(commands: Any) -> None:
    command = _add_command(commands, "models", "list the models batchgen can run, or show one model's fields", _models)
    command.add_argument("slug", nargs="?", metavar="SLUG", help="a model to show field by field")


def _models(args: argparse.Namespace) -> int:
    from batchgen.validation import did_you_mean

    if args.slug is None:
        rows = [("model", "kind", "seconds", "price a clip", "typical time")]
        for slug in known_models():
            model = load_model(slug)
            low_high = model.price_range_usd
            price = f"{format_dollars(low_high[0])}-{format_dollars(low_high[1])}" if low_high else "not stated"
            durations = model.durations
            contiguous = len(durations) > 3 and durations == list(range(durations[0], durations[-1] + 1))
            seconds = f"{durations[0]}-{durations[-1]}" if contiguous else ", ".join(map(str, durations))
            rows.append((slug, model.kind, seconds, price, f"~{model.typical_generation_s:.0f} s"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return int(ExitCode.OK)
    if args.slug not in known_models():
        hint = did_you_mean(args.slug, known_models()) or f" (known: {', '.join(known_models())})"
        raise UsageError(f'no model "{args.slug}"{hint}')
    print(_model_text(load_model(args.slug)))
    return int(ExitCode.OK)


def _model_text(model: Any) -> str:
    """One model, field by field, with its source and what in it is a guess."""
    lines = [
        f"{model.slug}: {model.title} ({model.kind}), ~{model.typical_generation_s:.0f} s",
        f"source: {model.source}",
    ]
    required = set(model.request_schema.get("required", []))
    for name, field in model.request_fields.items():
        kind = field.get("type", "")
        if "x-image" in field:
            kind = f"an image: a local file or an https URL (at most {field['x-image']['max_bytes'] // (1 << 20)} MB)"
        parts = [kind, "required" if name in required else ""]
        if "default" in field:
            parts.append(f"default {json.dumps(field['default'])}")
        if field.get("enum"):
            parts.append("one of " + ", ".join(map(str, field["enum"])))
        if "minimum" in field:
            parts.append(f"at least {field['minimum']}")
        if "maximum" in field:
            parts.append(f"at most {field['maximum']}")
        lines.append(f"  {name}: " + "; ".join(part for part in parts if part))
    lines.append(f"price ({'per second' if model.price.per == 'second' else 'per clip'}, the first that applies):")
    for rule in model.price.rules:
        when = ", ".join(f"{name} {'/'.join(map(_plain, values))}" for name, values in rule.when) or "otherwise"
        lines.append(f"  {rule.label}: {format_dollars(rule.usd)} ({when})")
    if model.price_range_usd:
        low, high = model.price_range_usd
        lines.append(f"the page's range: {format_dollars(low)}-{format_dollars(high)} a clip")
    else:
        lines.append("the page's range: not stated (every price above is a guess)")
    lines.extend(f"guess: {guess}" for guess in model.guesses)
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _add_simulate(commands: Any) -> None:
    command = _add_command(
        commands, "simulate", "serve the built-in simulator of Segmind's API on loopback until Ctrl-C", _simulate
    )
    command.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    command.add_argument("--latency-s", type=float, default=2.0, help="generation time in seconds (default 2)")
    command.add_argument(
        "--resolution",
        choices=["720p", "1080p"],
        help="make clips of this real size (textured, as heavy as real ones; default: small clips)",
    )
    command.add_argument("--jitter-s", type=float, default=0.0, help="± random spread of the generation time")
    command.add_argument("--credits", type=float, default=100.0, metavar="USD", help="starting balance per key")
    command.add_argument("--rpm", type=int, default=50, help="submits per minute per key (default 50, Pro)")
    command.add_argument("--ttl-s", type=float, default=3600.0, help="how long v2 requests can be polled")
    command.add_argument("--key", action="append", metavar="KEY", help=f"an accepted API key (default {DEFAULT_KEY})")
    command.add_argument("--v1-mode", choices=["bytes", "url", "base64"], default="bytes", help="how v1 answers")
    command.add_argument("--retry-after", action="store_true", help="add Retry-After to 429s (the real API does not)")
    command.add_argument("--video-size-mb", type=float, default=0.0, help="pad every video to this size")
    command.add_argument(
        "--fault-rate",
        type=float,
        help="chance of some fault per request, shared by the kinds (not stall_download, junk_status: --fault only)",
    )
    command.add_argument(
        "--fault", action="append", default=[], metavar="KIND=RATE", help=f"a rate per kind: {', '.join(KINDS)}"
    )
    command.add_argument(
        "--script", default="", help="scripted faults, e.g. submit:3=503,download:5=drop@0.4,download:6=stall"
    )
    command.add_argument("--slow-s", type=float, default=1.0, help="delay of a slow-first-byte fault")
    command.add_argument("--seed", type=int, default=0, help="seed of faults, ids and jitter")
    # Hostile network and provider: each off unless given (its default lives in SimSettings).
    command.add_argument(
        "--trickle", metavar="BYTES:MS", help="send every answer in pieces of BYTES, MS apart, e.g. 700:4 (default off)"
    )
    command.add_argument(
        "--foreign-origin", metavar="URL", help="origin named by the v2 submit's status URLs (default: the simulator's)"
    )
    command.add_argument(
        "--redirect-polls-to", metavar="URL", help="answer v2 status/result GETs 307 to URL, same path (default off)"
    )
    command.add_argument(
        "--quote-key", action="store_true", default=None, help="end every error message with the key sent (default off)"
    )
    command.add_argument(
        "--history-shape",
        choices=["data", "items", "results", "epoch", "unknown"],
        help="shape of request-history pages (default data)",
    )
    command.add_argument(
        "--journal", type=Path, metavar="FILE", help="replay FILE's books at start, then keep them there (default none)"
    )
    command.add_argument(
        "--stall-s", type=float, metavar="S", help="seconds between the bytes of a stall_download fault (default 1)"
    )
    command.add_argument(
        "--price-factor",
        type=float,
        metavar="X",
        help="charge X times the model's price table, as a provider that changed its prices (default 1)",
    )


def _simulate(args: argparse.Namespace) -> int:
    import asyncio

    from batchgen.simulator.server import SimSettings, parse_trickle

    hostile = {  # the hostile settings the user gave; the others keep their defaults, written in SimSettings
        "foreign_origin": args.foreign_origin,
        "redirect_polls_to": args.redirect_polls_to,
        "quote_key": args.quote_key,
        "history_shape": args.history_shape,
        "stall_gap_s": args.stall_s,
        "price_factor": args.price_factor,
    }
    if args.trickle is not None:
        hostile["trickle_bytes"], hostile["trickle_gap_s"] = parse_trickle(args.trickle)
    settings = SimSettings(
        keys=tuple(args.key or [DEFAULT_KEY]),
        credits_usd=args.credits,
        rpm=args.rpm,
        latency_s=args.latency_s,
        latency_jitter_s=args.jitter_s,
        resolution=args.resolution or "",
        ttl_s=args.ttl_s,
        v1_mode=args.v1_mode,
        retry_after=args.retry_after,
        slow_first_byte_s=args.slow_s,
        video_size_bytes=int(args.video_size_mb * 1024 * 1024),
        seed=args.seed,
        **{name: value for name, value in hostile.items() if value is not None},
    )
    faults = FaultPlan(
        rates=dict(_kind_rate(item) for item in args.fault),
        total_rate=args.fault_rate,
        seed=args.seed,
        script=parse_script(args.script),
    )
    try:
        ledger = asyncio.run(_serve(settings, faults, args.host, args.port, args.journal))
    except (OSError, OverflowError) as exc:
        raise UsageError(
            f"cannot serve on {args.host}:{args.port}: {exc}; pick another --port (0: any free one)"
        ) from exc
    for key, account in ledger.items():
        print(
            f"{key}: {len(account['requests'])} generation requests, {len(account['charges'])} charged, "
            f"spent {format_dollars(account['spent_usd'])}, balance {format_dollars(account['balance_usd'])}, "
            f"peak in progress {account['peak_in_progress']}{_repeats(account['paid_twice'])}"
        )
    return int(ExitCode.OK)


def _repeats(paid_twice: dict[str, int]) -> str:
    """What the provider can know of charges for one payload: that it was sent again, not why (the takes of a
    shot send one payload on purpose; only the run's state tells them from a duplicate: `batchgen reconcile`)."""
    again = sum(count - 1 for count in paid_twice.values())
    if not again:
        return ""
    return f", {again} charge{'s' * (again != 1)} for a payload charged before (takes, or duplicates: reconcile tells)"


def _kind_rate(item: str) -> tuple[str, float]:
    kind, _, rate = item.partition("=")
    try:
        return kind, float(rate)
    except ValueError:
        raise UsageError(f"--fault takes KIND=RATE, e.g. rate_429=0.1 (got {item!r})") from None


async def _serve(
    settings: SimSettings, faults: FaultPlan, host: str, port: int, journal: Path | None = None
) -> dict[str, Any]:
    import asyncio
    import signal

    from batchgen.simulator.server import running_simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_simulator(settings, faults, host, port, journal) as simulator:
        print(f"simulator serving {simulator.base_url} (Ctrl-C stops it and prints the ledger)")
        print(f"  export SEGMIND_BASE_URL={simulator.base_url}")
        print(f"  export SEGMIND_API_KEY={settings.keys[0]}")
        print(f"  export SEGMIND_HISTORY_URL={simulator.base_url}")  # it serves the history too
        print(f"  export SEGMIND_UPLOAD_URL={simulator.base_url}", flush=True)  # and the storage
        await stop.wait()
        return simulator.ledger()


# --- run ---------------------------------------------------------------------------------------------------


def _add_run(commands: Any) -> None:
    command = _add_command(commands, "run", "run (or resume) the jobs of a manifest; saves verified videos", _run)
    command.add_argument("manifest", metavar="MANIFEST", help="YAML manifest file")
    command.add_argument("--out", metavar="DIR", help="run directory (default output/<manifest name>/)")
    command.add_argument("--concurrency", type=int, metavar="N", help="jobs in flight at once (default: manifest's)")
    command.add_argument("--rpm", type=int, metavar="R", help="submits per minute (default: manifest's, else 5)")
    command.add_argument("--budget", type=float, metavar="USD", help="hard cap on spend (default: manifest's)")
    command.add_argument("--transport", choices=["v1", "v2"], help="v2: submit then poll (default); v1: one POST")
    _add_where(command)
    command.add_argument(
        "--history-lag-s",
        type=float,
        default=120.0,
        metavar="S",
        help="how long a lost submit "
        "may take to show in the request history before it is submitted again (default 120)",
    )
    command.add_argument("--max-attempts", type=int, metavar="N", help="attempts per job (default: manifest's, else 5)")
    command.add_argument(
        "--deadline",
        metavar="TIME",
        help="stop submitting when a job would end after TIME (HH:MM, the next such time, or an ISO date-time)",
    )
    command.add_argument(
        "--poll-interval-s",
        type=float,
        metavar="S",
        help="seconds between two polls of a submitted job (default 5); once jobs are seen finishing, polls gather "
        "where they finish, at least this far apart before that window and at most this far after it",
    )
    command.add_argument(
        "--max-polls-per-s",
        type=float,
        metavar="N",
        help="at most N polls a second for all the jobs in flight outside that window together, and N for those "
        "across it (default 50)",
    )
    command.add_argument(
        "--backoff-base-s",
        type=float,
        metavar="S",
        help="first retry's backoff ceiling (default 2; doubles each attempt, full jitter, at most 300)",
    )
    command.add_argument("--simulate", action="store_true", help="run against the built-in simulator (no key, no cost)")
    command.add_argument("--sim-latency-s", type=float, default=2.0, metavar="S", help="simulated generation time")
    command.add_argument(
        "--sim-resolution", choices=["720p", "1080p"], help="with --simulate: clips of this real size (default small)"
    )
    command.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    command.add_argument(
        "--serve", action="store_true", help="also serve the gallery, updated live as clips land (batchgen serve)"
    )
    _add_serve_flags(command, "--serve-host", "--serve-port")
    command.add_argument(
        "--progress-every-s",
        type=float,
        default=60.0,
        metavar="S",
        help="without a terminal, a progress line every S seconds, changed or not (default 60)",
    )
    command.add_argument(
        "--unreachable-s",
        type=float,
        metavar="S",
        help="stop the run (exit 4) when the API's host has not been reached for S seconds (default 120)",
    )
    command.add_argument(
        "--notify",
        action="append",
        metavar="URL",
        help="POST a JSON event to URL (a Slack, Discord or Mattermost webhook, an ntfy topic, any http(s) URL) when "
        "the run ends or stops, at 80 %% of the budget and when a job is possibly billed twice; repeatable, added to "
        "the manifest's notify:",
    )
    command.add_argument(
        "--notify-prompts",
        action="store_true",
        help="let the event of a job possibly billed twice carry its prompt (otherwise no prompt text is sent)",
    )
    command.add_argument("--no-notify", action="store_true", help="notify nobody, not even the manifest's notify: URLs")
    _add_state(command)
    command.add_argument(
        "--lease-s",
        type=float,
        default=60.0,
        metavar="S",
        help="with --state: a worker not heard from for S seconds is gone, and the others take its jobs in flight over "
        "(by request id, never paid again; default 60, at least 3)",
    )
    _add_max_jobs(command)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from batchgen.launch import load_run_manifest, open_run, run_root

    shared = _shared_reader(args)
    if shared is not None and args.serve:
        raise UsageError(
            "--serve reads the run directory's own state.db: with --state, `batchgen report` writes the gallery"
        )
    if args.lease_s < 3:
        raise UsageError("--lease-s must be at least 3 (a worker says it is alive every sixth of it)")
    loaded = load_run_manifest(args.manifest, args.max_jobs, args.out, shared=shared is not None)
    manifest = loaded.manifest
    settings = _run_settings(args, manifest)
    target = None if args.simulate else _target(args, manifest)
    urls = _notify_urls(args, manifest)
    if args.serve:
        _check_listen(args.serve_host, args.serve_port)
    root = run_root(manifest.name, args.out)
    if shared is not None:
        from batchgen.account import account_id

        key = DEFAULT_KEY if target is None else target.api_key
        shared = dataclasses.replace(shared, account=account_id(key), lease_s=args.lease_s, alone=args.simulate)
        settings = dataclasses.replace(settings, heartbeat_s=args.lease_s / 6)
    with open_run(root, manifest, loaded.jobs, settings.budget_micros, loaded.digest, shared) as (run_dir, store):
        progress = Progress(
            store.manifest_job_count(),
            settings.budget_micros,
            enabled=not args.no_progress,
            every_s=args.progress_every_s,
            initial=sum(store.counts()[state] for state in ("done", "failed", "lost")),
        )
        started = time.time()
        try:
            result = asyncio.run(_run_async(manifest, store, run_dir, settings, target, args, progress, urls, started))
        except BatchgenError as exc:
            exc.said = progress.stop_said  # "stopped: …" was printed as it happened: not again
            raise
        finally:
            progress.close()
        twice = len(store.flagged()[0])
    _print_result(result, root, stop_said=progress.stop_said, twice=twice)
    return int(result.exit_code)


def _record_run(store: Any, run_dir: Any, result: RunResult, started: float) -> None:
    """The run's end in its state (``last_run``), and its gallery and summary.json."""
    from batchgen.report import write_report

    last_run = {"started_at": started, "wall_s": time.time() - started, "exit_code": result.exit_code}
    store.set_meta(last_run={**last_run, "stop": result.stop_message})
    write_report(store, run_dir)


def _notify_urls(args: argparse.Namespace, manifest: Manifest) -> tuple[str, ...]:
    """The URLs to notify: the manifest's ``notify:`` and every ``--notify`` (none with ``--no-notify``), each
    checked before anything runs."""
    from batchgen.notify import check_notify_url

    if args.no_notify:
        return ()
    return tuple(check_notify_url(url) for url in dict.fromkeys([*manifest.notify, *(args.notify or [])]))


def _target(args: argparse.Namespace, manifest: Manifest) -> Target:
    """Where to send requests, from the flags shared by run and reconcile."""
    from batchgen.launch import resolve_target

    return resolve_target(
        manifest,
        base_url_flag=args.base_url,
        key_env=args.api_key_env,
        environ=os.environ,
        allow_insecure_http=args.allow_insecure_http,
        history_url_flag=args.history_url,
        upload_url_flag=args.upload_url,
    )


def _run_settings(args: argparse.Namespace, manifest: Manifest) -> RunSettings:
    from batchgen.runner import RunSettings

    budget = args.budget if args.budget is not None else manifest.budget_usd
    for name in ("concurrency", "rpm", "max_attempts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("poll_interval_s", "max_polls_per_s", "unreachable_s", "progress_every_s"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be more than 0")
    if budget is not None and budget <= 0:
        raise UsageError("--budget must be more than 0")
    poll = args.poll_interval_s or (max(0.05, args.sim_latency_s / 4) if args.simulate else 5.0)
    return RunSettings(
        concurrency=args.concurrency or manifest.concurrency,
        rpm=args.rpm or manifest.rpm,
        budget_micros=None if budget is None else micros(budget),
        transport=args.transport or manifest.transport or "v2",
        max_attempts=args.max_attempts or manifest.max_attempts or 5,
        poll_interval_s=poll,
        max_polls_per_s=args.max_polls_per_s or 50.0,
        backoff_base_s=args.backoff_base_s if args.backoff_base_s is not None else 0.5 if args.simulate else 2.0,
        deadline=_parse_deadline(args.deadline) if args.deadline else None,
        history_lag_s=args.history_lag_s,
        **({"unreachable_s": args.unreachable_s} if args.unreachable_s is not None else {}),
    )


def _parse_deadline(text: str, now: datetime | None = None) -> float:
    now = now or datetime.now().astimezone()
    try:
        if len(text) <= 5 and ":" in text:
            hours, minutes = (int(part) for part in text.split(":"))
            at = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
            return (at if at > now else at + timedelta(days=1)).timestamp()
        at = datetime.fromisoformat(text)
        return (at if at.tzinfo else at.astimezone()).timestamp()
    except ValueError:
        raise UsageError(f"--deadline {text!r}: write HH:MM (e.g. 07:00) or an ISO date-time") from None


async def _run_async(
    manifest: Manifest,
    store: Any,
    run_dir: Any,
    settings: RunSettings,
    target: Target | None,
    args: argparse.Namespace,
    progress: Progress,
    urls: tuple[str, ...],
    started: float,
) -> RunResult:
    """Run, record the run's end (its gallery), then notify it: the last event waited for a bounded time."""
    from batchgen.errors import BatchgenError
    from batchgen.notify import Notifier, NotifySettings, RunNotices

    notify_settings = NotifySettings(prompts=args.notify_prompts)
    if args.simulate:  # a demo's notifications are tried again as soon as its jobs are
        notify_settings = dataclasses.replace(notify_settings, backoff_s=0.1)
    async with Notifier(urls, _notify_problem(run_dir, progress), notify_settings) as notifier:
        notices = RunNotices(
            notifier,
            store,
            manifest.name,
            os.path.abspath(manifest.file),
            str((run_dir.root / "index.html").absolute()),
            settings.budget_micros,
            started,
            prompts=notify_settings.prompts,
        )
        try:
            result = await _run_target(manifest, store, run_dir, settings, target, args, progress, notices)
        except Exception as exc:
            code = exc.exit_code if isinstance(exc, BatchgenError) else ExitCode.JOBS_FAILED
            with contextlib.suppress(Exception):  # the state may be what failed: the error is raised all the same
                notices.ended(int(code), "error", str(exc))
            await notifier.finish()
            raise
        _record_run(store, run_dir, result, started)
        notices.ended(int(result.exit_code), result.stop_reason, result.stop_message)
        await notifier.finish()
    return result


def _notify_problem(run_dir: Any, progress: Progress) -> Callable[[str], None]:
    """How a notification that failed is said: a line of run.log, and a warning."""
    from batchgen.outputs import RunLog
    from batchgen.runner import Event

    def said(message: str) -> None:
        log = RunLog(run_dir.run_log)
        try:
            log.line("-", f"! {message}")
        finally:
            log.close()
        progress.event(Event("warning", None, f"! {message}"))

    return said


async def _run_target(
    manifest: Manifest,
    store: Any,
    run_dir: Any,
    settings: RunSettings,
    target: Target | None,
    args: argparse.Namespace,
    progress: Progress,
    notices: RunNotices,
) -> RunResult:
    """The run against ``target``, or against a simulator of its own (``--simulate``)."""
    if target is None:
        from batchgen.launch import Target
        from batchgen.simulator.server import SimSettings, running_simulator

        # The simulator keeps its requests and ledger in the run directory, so that a stopped demo resumes as a real
        # run does: its requests are still there to poll, fetch and find in the history, and none is paid twice.
        sim_settings = SimSettings(
            latency_s=args.sim_latency_s, rpm=max(settings.rpm, 50), resolution=args.sim_resolution or ""
        )
        async with running_simulator(sim_settings, journal=run_dir.root / SIMULATOR_JOURNAL) as simulator:
            sim_target = Target(simulator.base_url, DEFAULT_KEY, simulator.base_url, simulator.base_url)
            return await _served(manifest, store, run_dir, settings, sim_target, progress, args, notices)
    return await _served(manifest, store, run_dir, settings, target, progress, args, notices)


async def _served(
    manifest: Manifest,
    store: Any,
    run_dir: Any,
    settings: RunSettings,
    target: Target,
    progress: Progress,
    args: argparse.Namespace,
    notices: RunNotices,
) -> RunResult:
    """The run, with its live gallery served beside it when ``--serve`` asks."""
    if not args.serve:
        return await _drive(manifest, store, run_dir, settings, target, progress, notices)
    async with _gallery_server(run_dir.root, args.serve_host, args.serve_port) as url:
        say("info", f"the gallery, live: {url}")
        return await _drive(manifest, store, run_dir, settings, target, progress, notices)


async def _drive(
    manifest: Manifest,
    store: Any,
    run_dir: Any,
    settings: RunSettings,
    target: Target,
    progress: Progress,
    notices: RunNotices | None = None,
) -> RunResult:
    import asyncio
    import signal

    from batchgen.client import Client
    from batchgen.runner import Runner

    client = Client(
        target.base_url,
        target.api_key,
        connections=max(100, settings.concurrency * 2),
        history_url=target.history_url,
        upload_url=target.upload_url,
    )
    async with client:

        def on_event(event: Event) -> None:
            progress.event(event)
            if notices is not None:
                notices.on_event(event.kind, event.job_id)

        runner = Runner(store, run_dir, client, settings, on_event=on_event)
        progress.runner = runner
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.request_stop)
        heartbeat = asyncio.create_task(progress.heartbeat())
        try:
            return await runner.run()
        finally:
            heartbeat.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class Progress:
    """A tqdm bar on a terminal, one plain line a minute otherwise, or nothing (``--no-progress``)."""

    BAR_EVERY_S = 0.2

    def __init__(
        self, total: int, budget_micros: int | None, *, enabled: bool, every_s: float = 60.0, initial: int = 0
    ) -> None:
        """``initial``: the jobs finished before this run (a resumed run's bar starts there: its rate is this run's)."""
        from tqdm import tqdm

        self.enabled = enabled
        self.every_s = every_s
        self.stop_said = False  # the run's stop was printed as it happened: not again at the end
        self.budget = budget_micros
        self.runner: Runner | None = None
        self.total = total
        self.last_line = time.monotonic()
        self.last_bar = 0.0
        self.bar: tqdm[Any] | None = (
            tqdm(total=total, initial=initial, unit="job", file=sys.stderr, dynamic_ncols=True)
            if (enabled and sys.stderr.isatty())
            else None
        )

    def event(self, event: Event) -> None:
        """Warnings and failures are said whatever the progress display (``--no-progress`` hides only that)."""
        if event.kind in ("warning", "budget", "stop", "failed", "lost"):
            text = event.message.removeprefix("! ")
            quiet = event.kind in ("warning", "budget") or text.startswith(("interrupted", "stopped submitting"))
            self._say("warning" if quiet else "error", f"{event.job_id}: {text}" if event.job_id else text)
            self.stop_said = self.stop_said or event.kind == "stop"
        if not self.enabled or self.runner is None:
            return
        now = time.monotonic()
        if self.bar is not None:
            if now - self.last_bar >= self.BAR_EVERY_S:  # the counts are a query: not one per event
                self.last_bar = now
                self._update_bar()
        elif now - self.last_line >= self.every_s:
            self._line(now)

    async def heartbeat(self) -> None:
        """Without a terminal, a line a minute even while nothing changes (a stalled night shows as one)."""
        import asyncio

        if not self.enabled or self.bar is not None or self.runner is None:
            return
        while True:
            await asyncio.sleep(max(0.0, self.last_line + self.every_s - time.monotonic()))
            now = time.monotonic()
            if now - self.last_line >= self.every_s:
                self._line(now)

    def _line(self, now: float) -> None:
        self.last_line = now
        finished, words = self._figures()
        print(f"{time.strftime('%H:%M:%S')} {finished}/{self.total} finished, {words}", file=sys.stderr, flush=True)

    def _figures(self) -> tuple[int, str]:
        """(finished, the rest in words: failed, at the provider, downloading, money spent [of the budget])."""
        assert self.runner is not None
        counts = self.runner.store.counts()
        finished = counts["done"] + counts["failed"] + counts["skipped"] + counts["lost"]
        spent = format_usd(self.runner.store.money().spent_micros)
        of = f" of {format_usd(self.budget)}" if self.budget is not None else ""
        # At the provider: what holds a slot of --concurrency (a finished clip being downloaded holds none).
        generating = counts["submitting"] + counts["submitted"]
        words = f"{counts['failed']} failed, {generating} at the provider, {counts['downloading']} downloading"
        return finished, f"{words}, {spent}{of} spent"

    def _update_bar(self) -> None:
        assert self.bar is not None
        finished, words = self._figures()
        self.bar.n = finished
        self.bar.set_postfix_str(words, refresh=True)

    def _say(self, kind: str, message: str) -> None:
        if self.bar is not None:
            self.bar.write(voice(kind, message), file=sys.stderr)
        else:
            say(kind, message)

    def close(self) -> None:
        if self.bar is not None:
            if self.runner is not None:
                self._update_bar()  # the last events may have come between two updates
            self.bar.close()


def _print_result(result: RunResult, root: Path, *, stop_said: bool, twice: int) -> None:
    counts = result.counts
    shown = ", ".join(f"{counts[state]} {state}" for state in counts if counts[state])
    doubt = f"; {twice} possibly billed twice (`batchgen reconcile` asks the provider)" if twice else ""
    print(f"{root}: {shown}; spent {format_usd(result.money.spent_micros)}{doubt}; open {root / 'index.html'}")
    if result.stop_message and not stop_said:
        kind = "warning" if result.exit_code == ExitCode.INTERRUPTED else "error"
        say(kind, result.stop_message)
    retry = "--lost` pays again for the lost ones" if counts["lost"] else "--failed` tries again"
    hints = {
        ExitCode.JOBS_FAILED: f"see `batchgen status --out {root}`; `batchgen retry --out {root} {retry}",
        ExitCode.BUDGET: "jobs were left for the budget or the deadline: raise --budget (or, with --state, the "
        "account's: `batchgen account budget`), or move the deadline, and run again to go on",
        ExitCode.PROVIDER: "fix the cause (key, credits, model, network), then run again: finished jobs are not paid "
        "again",
        ExitCode.INTERRUPTED: "run the same command again to resume",
    }
    if result.exit_code in hints:
        print(hints[result.exit_code], file=sys.stderr)


# --- status and retry --------------------------------------------------------------------------------------


def _add_target(command: argparse.ArgumentParser) -> None:
    command.add_argument("manifest", nargs="?", metavar="MANIFEST", help="the manifest of the run")
    command.add_argument("--out", metavar="DIR", help="the run directory (instead of MANIFEST)")
    _add_state(command)


def _add_state(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--state",
        metavar="URL",
        help="the state in PostgreSQL, shared by a team's runs and workers: postgresql://USER:PASSWORD@HOST/DB "
        "(default $BATCHGEN_STATE_URL; without either, the run directory's state.db)",
    )


def _shared_reader(args: argparse.Namespace) -> Any:
    """The PostgreSQL state the flags or the environment name (``SharedState``), or ``None``."""
    from batchgen.launch import SharedState, state_url

    url = state_url(args.state, os.environ)
    return None if url is None else SharedState(url)


def _root_of(args: argparse.Namespace) -> Path:
    from batchgen.launch import run_root

    if args.out:
        return Path(args.out)
    if not args.manifest:
        raise UsageError("name the run: give its MANIFEST or --out DIR")
    return run_root(load_manifest(args.manifest, max_jobs=sys.maxsize).name, None)


def _add_status(commands: Any) -> None:
    command = _add_command(commands, "status", "show a run's jobs, money, failures and requests in flight", _status)
    _add_target(command)
    command.add_argument("--json", action="store_true", help="print the status as JSON")
    command.add_argument("--html", action="store_true", help="print the path of the run's gallery (index.html)")


def _status(args: argparse.Namespace) -> int:
    from batchgen.launch import open_state
    from batchgen.report import status_data, status_text

    shared = _shared_reader(args)
    if shared is not None and not args.manifest and not args.out:
        return _account_status(args, shared.url)
    root = _root_of(args)
    if args.html:
        page = root / "index.html"
        if not page.exists():
            raise UsageError(f"no gallery in {root} yet: `batchgen report --out {root}` writes it")
        print(page.resolve())
        return int(ExitCode.OK)
    with open_state(root, shared=shared) as (_, store):
        data = status_data(store)
    print(json.dumps(data, indent=2) if args.json else status_text(data))
    return int(ExitCode.OK)


def _add_account(commands: Any) -> None:
    command = _add_command(
        commands,
        "account",
        "the budget every run on one API key shares, in a PostgreSQL state (batchgen status --state shows it)",
        _account,
    )
    command.add_argument("what", choices=["budget"], help="what to set: the account's budget")
    command.add_argument("amount", metavar="USD|off", help="the cap in dollars, or 'off' for none")
    command.add_argument(
        "--per",
        choices=["day", "week", "month"],
        help="a cap for each day, week (from Monday) or month, UTC (default: a fixed total)",
    )
    _add_state(command)
    command.add_argument(
        "--api-key-env", default=KEY_ENV, metavar="NAME", help="the environment variable holding the account's key"
    )
    command.add_argument("--simulate", action="store_true", help="the account of the built-in simulator's key")


def _account(args: argparse.Namespace) -> int:
    from batchgen.account import account_id
    from batchgen.pgstore import set_budget

    shared = _shared_reader(args)
    if shared is None:
        raise UsageError(
            "an account's budget lives in a shared state: pass --state postgresql://… or set BATCHGEN_STATE_URL"
        )
    if args.amount == "off":
        cap = None
    else:
        try:
            dollars = float(args.amount)
        except ValueError:
            raise UsageError(f"budget {args.amount!r}: write an amount in dollars (e.g. 250) or 'off'") from None
        if not dollars > 0 or dollars == float("inf"):
            raise UsageError("the account's budget must be more than 0 dollars (or 'off')")
        cap = micros(dollars)
    key = DEFAULT_KEY if args.simulate else os.environ.get(args.api_key_env, "").strip()
    if not key:
        raise UsageError(f"no API key: the account is named by its key; set {args.api_key_env} (or pass --simulate)")
    account = account_id(key)
    ledger = set_budget(shared.url, account, cap, args.per if cap is not None else None)
    left = ledger.left_micros()
    print(
        f"account {account}: budget {ledger.describe_cap() if cap is not None else 'off'}; spent "
        f"{format_usd(ledger.spent_micros)}, reserved {format_usd(ledger.reserved_micros)}"
        + ("" if left is None else f", {format_usd(max(0, left))} left")
    )
    return int(ExitCode.OK)


def _account_status(args: argparse.Namespace, url: str) -> int:
    """Every run of the state (of the account, when its key is set): jobs, money, workers and the shared pace."""
    from batchgen.account import account_id
    from batchgen.pgstore import account_overview, shown_url

    key = os.environ.get(KEY_ENV, "").strip()
    data = account_overview(url, account_id(key) if key else None)
    if args.json:
        print(json.dumps(data, indent=2))
        return int(ExitCode.OK)
    print(f"state {shown_url(url)}: {len(data['runs'])} run(s), {format_dollars(data['total_spent_usd'])} spent in all")
    for account in data["accounts"]:
        budget = account["budget"] or "no account budget"
        left = "" if account["left_usd"] is None else f", {format_dollars(account['left_usd'])} left"
        paused = f", paused for {account['paused_for_s']:.0f} s more" if account["paused_for_s"] > 0 else ""
        print(
            f"account {account['account']}: {budget}; spent {format_dollars(account['spent_usd'])} (possibly billed "
            f"{format_dollars(account['possibly_billed_usd'])}), reserved {format_dollars(account['reserved_usd'])}"
            f"{left}; {account['submits_last_minute']} submit(s) in the last minute{paused}"
        )
    for run in data["runs"]:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(run["counts"].items()) if n) or "no jobs"
        budget = "" if run["budget_usd"] is None else f" of {format_dollars(run['budget_usd'])}"
        print(f"run {run['run']}: {counts}; spent {format_dollars(run['spent_usd'])}{budget}")
        for worker in run["workers"]:
            alive = "alive" if worker["alive"] else "silent past its lease"
            print(
                f"  worker {worker['host']} pid {worker['pid']} ({worker['directory']}): heard from "
                f"{worker['heard_from_s_ago']:.0f} s ago, {alive}, {worker['in_flight']} in flight"
            )
    return int(ExitCode.OK)


def _add_where(command: argparse.ArgumentParser) -> None:
    """Where the provider is and which key it is sent (run, reconcile, verify)."""
    command.add_argument(
        "--base-url",
        metavar="URL",
        help="API base URL (default $SEGMIND_BASE_URL, the manifest's, else https://api.segmind.com)",
    )
    command.add_argument(
        "--api-key-env", default=KEY_ENV, metavar="NAME", help="the environment variable holding the key"
    )
    command.add_argument("--allow-insecure-http", action="store_true", help="allow a plain-http, non-loopback URL")
    command.add_argument(
        "--history-url",
        metavar="URL",
        help="the provider's request history (default "
        "$SEGMIND_HISTORY_URL, else https://api.spotprod.segmind.com; 'off' for none)",
    )
    command.add_argument(
        "--upload-url",
        metavar="URL",
        help="the provider's storage, where local images are uploaded (default $SEGMIND_UPLOAD_URL, else "
        "https://workflows-api.segmind.com)",
    )


def _add_provider_flags(command: argparse.ArgumentParser, what: str) -> None:
    """The flags of a command that talks to the provider about an existing run (reconcile, verify --repair)."""
    _add_where(command)
    command.add_argument(
        "--simulate",
        action="store_true",
        help=f"a run made with --simulate: {what} its simulator (its books are kept in the run directory)",
    )


@asynccontextmanager
async def _provider_of(args: argparse.Namespace, manifest: Manifest, root: Path) -> AsyncIterator[Target]:
    """Where an existing run's provider is: the flags' target, or with ``--simulate`` the run's own simulator,
    served again from its journal for the block."""
    if not args.simulate:
        yield _target(args, manifest)
        return
    from batchgen.launch import Target
    from batchgen.simulator.server import running_simulator

    journal = root / SIMULATOR_JOURNAL
    if not journal.exists():
        raise UsageError(f"{root} was not run with --simulate: there is no {journal.name} in it")
    async with running_simulator(journal=journal) as simulator:
        yield Target(simulator.base_url, DEFAULT_KEY, simulator.base_url, simulator.base_url)


def _run_manifest(args: argparse.Namespace, store: Any) -> Manifest:
    """The manifest of an existing run, for where its provider is: as the state keeps it (checked when the run
    began; its images may have moved since, which a comparison of books does not care about), else the file."""
    from batchgen.manifest import manifest_from_data

    data = store.get_meta("manifest_data")
    file = store.get_meta("manifest")
    if isinstance(data, dict) and (args.manifest is None or os.path.abspath(args.manifest) == file):
        return manifest_from_data(str(file), data)
    return load_manifest(args.manifest or file, max_jobs=sys.maxsize)


def _add_reconcile(commands: Any) -> None:
    command = _add_command(
        commands,
        "reconcile",
        "compare the run's spend with the provider's request history (exit 1 if they differ)",
        _reconcile,
    )
    _add_target(command)
    command.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _add_provider_flags(command, "compare with the books of")


def _reconcile(args: argparse.Namespace) -> int:
    import asyncio

    from batchgen.client import Client
    from batchgen.launch import open_state
    from batchgen.reconcile import reconcile, reconcile_text

    root = _root_of(args)
    with open_state(root, shared=_shared_reader(args)) as (run_dir, store):
        manifest = _run_manifest(args, store)

        async def compare() -> dict[str, Any]:
            async with _provider_of(args, manifest, root) as target:
                if target.history_url is None:
                    raise UsageError("reconcile needs the request history: give --history-url")
                client = Client(target.base_url, target.api_key, history_url=target.history_url)
                async with client:
                    return await reconcile(store, client, run_dir)

        data = asyncio.run(compare())
    print(json.dumps(data, indent=2) if args.json else reconcile_text(data))
    return int(ExitCode.OK if data["agree"] else ExitCode.JOBS_FAILED)


def _add_verify(commands: Any) -> None:
    command = _add_command(
        commands,
        "verify",
        "check every finished video: present, of its size and sha256, playable; --repair downloads the missing and "
        "damaged again (never pays again); exit 1 if any is left bad",
        _verify,
    )
    _add_target(command)
    command.add_argument(
        "--repair",
        action="store_true",
        help="download missing or damaged videos again, from their recorded URL or the provider's request history",
    )
    command.add_argument("--json", action="store_true", help="print the findings as JSON")
    _add_provider_flags(command, "repair from")


def _verify(args: argparse.Namespace) -> int:
    from batchgen.launch import open_state
    from batchgen.verify import video_problem

    root = _root_of(args)
    with open_state(root, write=args.repair, shared=_shared_reader(args)) as (run_dir, store):
        videos = store.done_videos()
        bad = {video.job_id: problem for video in videos if (problem := video_problem(run_dir.root, video))}
        for job in store.jobs(["downloading"]):  # a repair (or a run) that did not finish: not whole either
            bad[job.id] = f"paid, its video not downloaded yet ({job.reason or 'a run or repair did not finish'})"
        repaired: dict[str, str] = {}
        if args.repair and bad:
            repaired = _repair(args, root, run_dir, store, bad)
    rows = [{"job": job_id, "problem": problem, "now": repaired.get(job_id)} for job_id, problem in bad.items()]
    data: dict[str, Any] = {"checked": len(videos), "whole": len(videos) - len(bad), "bad": rows}
    left = [row for row in rows if row["now"] != "repaired"]
    print(json.dumps(data, indent=2) if args.json else _verify_text(root, data))
    return int(ExitCode.JOBS_FAILED if left else ExitCode.OK)


def _repair(args: argparse.Namespace, root: Path, run_dir: Any, store: Any, bad: dict[str, str]) -> dict[str, str]:
    """Download the bad videos again with a runner that never submits; what became of each (``repaired``, or why
    not)."""
    import asyncio

    from batchgen.runner import RunSettings

    manifest = _run_manifest(args, store)
    settings = RunSettings(submit=False, check_credits=False, backoff_base_s=0.5 if args.simulate else 2.0)
    progress = Progress(len(bad), None, enabled=False)

    async def repair() -> None:
        async with _provider_of(args, manifest, root) as target:  # no key, no change: said before anything moves
            now = time.time()
            for job_id, problem in bad.items():
                with contextlib.suppress(OSError):
                    (run_dir.videos / f"{job_id}.mp4").unlink(missing_ok=True)
                store.redownload(job_id, problem, now)
            await _drive(manifest, store, run_dir, settings, target, progress)

    asyncio.run(repair())
    states = {job.id: job for job in store.jobs(["done", "failed", "lost", "downloading"])}
    return {
        job_id: "repaired" if states[job_id].state == "done" else f"{states[job_id].state}: {states[job_id].reason}"
        for job_id in bad
    }


def _verify_text(root: Path, data: dict[str, Any]) -> str:
    count = data["checked"]
    lines = [
        f"{root}: {count} finished video{'s' * (count != 1)}, {data['whole']} whole, {len(data['bad'])} missing or "
        "damaged"
    ]
    for row in data["bad"]:
        now = f" → {row['now']}" if row["now"] else ""
        lines.append(f"  {row['job']}: {row['problem']}{now}")
    if any(row["now"] is None for row in data["bad"]):
        lines.append(f"`batchgen verify --out {root} --repair` downloads them again (paid clips are not paid again)")
    return "\n".join(lines)


def _add_report(commands: Any) -> None:
    command = _add_command(commands, "report", "write summary.json and the index.html gallery of a run", _report)
    _add_target(command)
    command.add_argument(
        "--full", action="store_true", help="make everything again (default: only what changed since the last report)"
    )


def _report(args: argparse.Namespace) -> int:
    from batchgen.launch import open_state
    from batchgen.report import write_report

    root = _root_of(args)
    with open_state(root, write=True, shared=_shared_reader(args)) as (run_dir, store):
        run_dir.prepare()
        summary = write_report(store, run_dir, full=args.full)
        places = store.places() if store.shared else {}
    print(f"{root / 'index.html'}: {summary['total']} jobs; summary in {root / 'summary.json'}")
    if places:  # workers of a shared state: each clip is where its worker placed it (summary.json: placed_on)
        for place, count in sorted(places.items(), key=lambda item: str(item[0])):
            print(f"  {count} clip{'s' * (count != 1)} on {place or 'an unrecorded machine (an older batchgen)'}")
    return int(ExitCode.OK)


def _add_serve(commands: Any) -> None:
    command = _add_command(
        commands,
        "serve",
        "serve a run's gallery over http, updated live as clips land (read-only; Ctrl-C stops it)",
        _serve_gallery,
    )
    _add_target(command)
    _add_serve_flags(command, "--host", "--port")


def _add_serve_flags(command: argparse.ArgumentParser, host: str, port: str) -> None:
    command.add_argument(
        host, default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    command.add_argument(port, type=_port, default=8765, metavar="PORT", help="port (default 8765; 0: any free port)")


def _port(text: str) -> int:
    """A TCP port number, 0 to 65535 (0: any free port)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return number


def _check_listen(host: str, port: int) -> None:
    """Refuse, before a run begins, an address the gallery could not listen on (a run should not start for a server
    that cannot)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        what = "that address" if isinstance(exc, socket.gaierror) else "that port"
        raise UsageError(
            f"cannot serve the gallery on {host}:{port} ({exc.strerror or exc}): give another {what} "
            "(--serve-host, --serve-port)"
        ) from None


def _serve_gallery(args: argparse.Namespace) -> int:
    import asyncio

    root = _root_of(args)
    if _shared_reader(args) is not None:
        raise UsageError(
            "serve reads a run directory's own state.db; a run whose state is in PostgreSQL has its gallery written "
            "by `batchgen report --state …` (open its index.html)"
        )
    if not root.is_dir():
        raise UsageError(f"no run directory {root}: run the batch first (or name it with --out)")
    asyncio.run(_serving(root, args.host, args.port))
    return int(ExitCode.OK)


async def _serving(root: Path, host: str, port: int) -> None:
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _gallery_server(root, host, port) as url:
        print(f"serving the gallery of {root} at {url} (Ctrl-C stops it)", flush=True)
        await stop.wait()


@asynccontextmanager
async def _gallery_server(root: Path, host: str, port: int) -> AsyncIterator[str]:
    """The live gallery of ``root`` served for the block; its URL. A port in use is a usage error."""
    from batchgen.serve import GalleryServer

    server = GalleryServer(root)
    try:
        url = await server.start(host, port)
    except OSError as exc:
        await server.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): give another address or port"
        ) from None
    from batchgen.launch import is_loopback

    if not is_loopback(host):
        say("warning", f"the gallery is served to the network on {host}: anyone who reaches it sees the prompts")
        if host in ("0.0.0.0", "::"):
            url += f" (from this machine: http://127.0.0.1:{url.rstrip('/').rsplit(':', 1)[1]}/)"
    try:
        yield url
    finally:
        await server.close()


def _add_retry(commands: Any) -> None:
    command = _add_command(commands, "retry", "put failed (--failed) or lost (--lost) jobs back in line", _retry)
    _add_target(command)
    command.add_argument(
        "--failed",
        action="store_true",
        help="failed jobs (the default); a paid clip is only downloaded again, never paid again",
    )
    command.add_argument("--lost", action="store_true", help="lost jobs: requests the provider forgot (pays again)")


def _retry(args: argparse.Namespace) -> int:
    from batchgen.launch import open_state

    states = [state for state, wanted in (("failed", args.failed), ("lost", args.lost)) if wanted] or ["failed"]
    with open_state(_root_of(args), write=True, shared=_shared_reader(args)) as (_, store):
        ids = store.requeue(states, time.time())
    line = f"{len(ids)} {' and '.join(states)} job{'s' * (len(ids) != 1)} back in line"
    print(f"{line}: `batchgen run` with the run's manifest tries {'it' if len(ids) == 1 else 'them'} again")
    return int(ExitCode.OK)
