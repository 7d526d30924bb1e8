"""The ``gradscope`` command line.

Each subcommand has a ``_add_<name>`` function that declares its arguments and
points ``func`` at a handler returning the exit code. Handlers import heavy
modules themselves (the analyzer, the comparison, the terminal renderer: the
analysis behind them), so ``gradscope info`` stays fast. Known errors become one
line on stderr and an exit code; ``GRADSCOPE_DEBUG=1`` shows the traceback.

Library messages name options as Python does (``batch_size=1``); the command line
shows them, and the summary it prints, with its flags (:func:`option_flags`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import warnings
import sys
import threading
from typing import Optional, Sequence

import torch

from . import __version__, _ext
from .demo import BATCH_SIZE, DEPTH, WIDTH, demo
from .errors import EXIT_OK, GradscopeError, did_you_mean, in_flag_terms
from .models.failures import with_type
from .report import DEFAULT_FORMATS, RENDERERS, Report, check_output
from .variants import BASELINES, WHAT_IFS

DEBUG_ENV = "GRADSCOPE_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# Control characters (C0 but newline and tab, DEL, C1) and the bidirectional overrides that reorder a line:
# a model's config, a checkpoint's names or a report.json could otherwise clear the screen, set the terminal's
# title or print lines that look like gradscope's own.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every character that would act on a terminal written as its visible escape (``\\x1b``)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def say(text: str, stream=None, **kwargs) -> None:
    """Print to the terminal (stdout by default): every line the command prints goes through here."""
    print(terminal_safe(text), file=stream or sys.stdout, **kwargs)


def _warning_printer(flags: dict[str, str]):
    """warnings.showwarning while a command runs: one line, in the command's terms, control characters
    neutralized."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        say(f"gradscope: warning: {in_flag_terms(str(message), flags)}", file or sys.stderr)

    return show


# --- gradscope info ---------------------------------------------------------------


# Packages gradscope's extras bring, whose versions bear on what it measures or loads (``gradscope info``).
OPTIONAL_PACKAGES = ("numpy", "transformers", "accelerate", "safetensors", "peft", "torchvision", "matplotlib",
                     "tensorboard", "lightning")


def package_versions(names: Sequence[str] = OPTIONAL_PACKAGES) -> dict:
    """Installed version of each package, None where it is not installed (read from metadata, not imported)."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect_info() -> dict:
    """Versions, the backend per device type and why, and the build record."""
    status = _ext.STATUS
    cuda_visible = torch.cuda.is_available()
    info = {
        "gradscope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": status.state,
        "backend": {
            "cpu": "fused" if status.fused_for("cpu") else "reference",
            "cuda": "fused" if status.fused_for("cuda") else "reference",
        },
        "reason": {"cpu": status.reason_for("cpu"), "cuda": status.reason_for("cuda")},
        "cpu_simd": _ext.cpu_simd(),
        "build": status.build_info,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda_visible else [],
        "packages": package_versions(),
    }
    return info


def _print_info(info: dict) -> None:
    build = info["build"]
    rows = [
        ("gradscope", info["gradscope"]),
        ("python", info["python"]),
        ("torch", f"{info['torch']} (CUDA {info['torch_cuda'] or 'none'})"),
    ]
    for device in ("cpu", "cuda"):
        backend = info["backend"][device]
        reason = info["reason"][device]
        detail = backend
        if backend == "fused" and device == "cpu":
            detail = f"fused ({info['cpu_simd']} kernel)"
        elif backend == "fused" and not info["gpus"]:
            detail = "fused (kernel built; no GPU visible)"
        rows.append((f"backend {device}", detail + (f": {reason}" if reason else "")))
    if build:
        rows.append(
            (
                "built for",
                f"torch {build.get('torch')}, CUDA kernel "
                + (f"yes (CUDA {build.get('cuda_version')}, arch {build.get('cuda_arch_list')})" if build.get("cuda") else "no"),
            )
        )
    else:
        rows.append(("built for", "no build record (extension not built)"))
    rows.append(("GPUs", ", ".join(info["gpus"]) or "none visible"))
    installed = [f"{name} {version}" for name, version in info["packages"].items() if version]
    rows.append(("packages", ", ".join(installed) or "none of the optional ones"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        say(f"{key:<{width}}  {value}")


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        say(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return EXIT_OK


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, the backend in use and why")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_info)


# --- gradscope analyze / demo -------------------------------------------------------


def _progress_printer(flags: dict[str, str]):
    """One line per step on stderr, with the seconds since the command started, in the command's terms."""
    import time

    started = time.perf_counter()

    def progress(message: str) -> None:
        say(f"[{time.perf_counter() - started:6.1f}s] {in_flag_terms(message, flags)}", sys.stderr, flush=True)

    return progress


def _names(text: str) -> tuple[str, ...]:
    """``"he, sigmoid,he"`` -> ``("he", "sigmoid")``: a name given twice runs (and shows) once; ``none`` is none."""
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"))


SEED_LIMIT = 2**63  # torch.manual_seed takes up to 2**64 - 1; inputs add small offsets to the seed


def _seed(text: str) -> int:
    """argparse type for --seed: an integer 0 <= seed < 2**63, or a clear usage error (exit 2)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give an integer from 0 to 2**63 - 1")
    return seed


def _finish(report, args, progress) -> int:
    """Print the summary on stdout and write the report when --out is given."""
    import shlex

    from .report.terminal import render_text, terminal_width  # a handler's: see the module docstring

    report.meta["arguments"] = {k: v for k, v in vars(args).items() if k != "func"}
    entry = os.path.basename(sys.argv[0]) if sys.argv else ""
    if entry in ("gradscope", "__main__.py"):  # run as the command, not from Python with main([...])
        report.meta["command"] = shlex.join(["gradscope", *sys.argv[1:]])
    # first: a failed write still leaves the results on screen; what it quotes of the library, in flags
    say(in_flag_terms(render_text(report, terminal_width()), args.flags), end="", flush=True)
    if args.out:
        written = report.save(args.out, args.format, force=args.force)
        progress("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


def _add_write_flags(p, default_out) -> None:
    p.add_argument("--out", metavar="DIR", default=default_out,
                   help="directory to write the report to (default: "
                        + (f"{default_out})" if default_out else "none: only the summary is printed)"))
    p.add_argument("--format", default=",".join(DEFAULT_FORMATS), metavar="LIST",
                   help=f"report formats, comma separated, of {', '.join(RENDERERS)} "
                        f"(default: {','.join(DEFAULT_FORMATS)}; png needs matplotlib)")
    p.add_argument("--force", action="store_true",
                   help="replace a report already in --out (its files this run does not write are removed)")


def _add_output_flags(p, default_out) -> None:
    _add_write_flags(p, default_out)
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed for inputs, masking and initialization, 0 to 2**63 - 1 (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu or cuda (default auto)")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyzer import AnalyzeConfig, analyze  # a handler's: see the module docstring

    config = AnalyzeConfig(
        baselines=_names(args.baselines), what_ifs=_names(args.what_if), batch_size=args.batch_size,
        seq_len=args.seq_len, batches=args.batches, seed=args.seed, device=args.device, dtype=args.dtype,
        text=args.text, images=args.images, image_size=args.image_size, arch=args.arch,
        trust_remote_code=args.trust_remote_code,
    )
    if args.out:
        check_output(args.out, args.format, force=args.force)  # before any work, not after it
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported, which happens below
    progress = _progress_printer(args.flags)
    report = analyze(args.model, config, progress=progress)
    return _finish(report, args, progress)


def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze", help="gradient flow of a model against from-scratch, shallow and what-if baselines",
        description="Measure the gradient flow of MODEL (a Hugging Face id or directory, a torchvision name, "
                    "or a checkpoint file with --arch) and of its variants, on one batch.",
    )
    p.add_argument("model", help="Hugging Face id or local directory, torchvision name, or checkpoint file")
    p.add_argument("--baselines", default=",".join(BASELINES), metavar="LIST",
                   help=f"comma separated, of {', '.join(BASELINES)}; 'none' for none (default: all three)")
    p.add_argument("--what-if", default="", metavar="LIST",
                   help=f"comma separated surgery variants on the scratch model: {', '.join(WHAT_IFS)}")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences or images per batch (default 8)")
    p.add_argument("--seq-len", type=int, default=None, metavar="N",
                   help="tokens per sequence for text models (default 128, or the model's positions if fewer)")
    p.add_argument("--batches", type=int, default=1, metavar="N", help="batches to average the gradient over (default 1)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16, float64, or auto")
    p.add_argument("--text", metavar="FILE", help="text file to use instead of the built-in English corpus")
    p.add_argument("--images", metavar="DIR", help="JPEG/PNG directory instead of a synthetic image batch")
    p.add_argument("--image-size", type=int, metavar="PIXELS", help="side of the synthetic images (default: the weights' crop)")
    p.add_argument("--arch", help="torchvision architecture of a checkpoint file, e.g. resnet50")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a Hugging Face model run code shipped with it (off by default)")
    p.add_argument("--offline", action="store_true",
                   help="download nothing (sets HF_HUB_OFFLINE=1): local directories, files and caches only")
    _add_output_flags(p, default_out="gradscope-report")
    p.set_defaults(func=_cmd_analyze)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.out:
        check_output(args.out, args.format, force=args.force)
    progress = _progress_printer(args.flags)
    report = demo(depth=args.depth, width=args.width, batch_size=args.batch_size, seed=args.seed,
                  device=args.device, train_steps=args.train, progress=progress)
    return _finish(report, args, progress)


def _training_steps(text: str) -> int:
    """argparse type for demo --train: a number of steps, at least 1."""
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of steps") from None
    if steps < 1:
        raise argparse.ArgumentTypeError(f"{text}: give at least 1 step")
    return steps


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="vanishing gradients and their fixes, side by side, on a built-in deep MLP (no download)",
        description="A deep MLP built as sigmoid, tanh, ReLU (default init), ReLU (He init), with BatchNorm, and "
                    "residual, analyzed side by side on one seeded batch.",
    )
    p.add_argument("--depth", type=int, default=DEPTH, help=f"blocks (default {DEPTH})")
    p.add_argument("--width", type=int, default=WIDTH, help=f"units per block (default {WIDTH})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"samples (default {BATCH_SIZE})")
    p.add_argument("--train", type=_training_steps, default=0, metavar="STEPS",
                   help="then train each variant for STEPS steps with SGD and with Adam on a fixed teacher task, "
                        "and report its loss curve and how far its first and last block moved (default: no training)")
    _add_output_flags(p, default_out=None)
    p.set_defaults(func=_cmd_demo)


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_reports  # a handler's: see the module docstring

    if args.out:
        check_output(args.out, args.format, force=args.force)
    progress = _progress_printer(args.flags)
    labels = tuple(n.strip() for n in args.labels.split(",") if n.strip()) if args.labels else ()
    report = compare_reports(args.reports, labels=labels)  # repeated labels stay: compare numbers them
    for warning in report.meta.get("warnings", []):
        say(f"gradscope: warning: {warning}", sys.stderr)
    progress(f"compared {len(args.reports)} reports: {len(report.comparisons)} pairs of variants")
    return _finish(report, args, progress)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="several saved reports side by side: per-block ratios, overlaid flow, verdict changes",
        description="Compare reports written by analyze, demo or compare (report.json files or the directories "
                    "holding them). The first is the reference: each variant of a later report is compared with "
                    "the reference's variant of the same name (in order, where no name is shared), blocks matched by "
                    "name (by depth, where no block name is shared); a report of another model or with other blocks "
                    "is compared with a warning saying how. Training runs compare with training runs, analyses "
                    "with analyses.",
    )
    p.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files or directories holding one")
    p.add_argument("--labels", metavar="LIST",
                   help="comma separated names for the reports (default: each report's directory or file name)")
    _add_write_flags(p, default_out="gradscope-compare")
    p.set_defaults(func=_cmd_compare)


# --- gradscope show -------------------------------------------------------------------


def _cmd_show(args: argparse.Namespace) -> int:
    from .report.terminal import render_text, terminal_width  # a handler's: see the module docstring

    report = Report.load(args.report)  # bounded and checked: a file that is not a report is one line, exit 2
    # as the command that wrote it printed it: the options its notes name, in that command's flags
    arguments = report.meta.get("arguments")
    writer = arguments.get("command") if isinstance(arguments, dict) else None
    commands = build_parser().commands
    flags = option_flags(commands[writer]) if isinstance(writer, str) and writer in commands else {}
    say(in_flag_terms(render_text(report, terminal_width()), flags), end="", flush=True)
    return EXIT_OK


def _add_show(sub) -> None:
    p = sub.add_parser(
        "show", help="a saved report in the terminal: a training run's at a glance, or an analysis or comparison",
        description="Print a report written by analyze, demo, compare or a training monitor (GradientMonitor, the "
                    "Trainer and Lightning callbacks' report_dir) as the terminal summary. For a training run: the "
                    "steps recorded, the global gradient norm before clipping and the clipping, spikes, non-finite "
                    "steps, the verdict over windows of steps, and the last step per block.",
    )
    p.add_argument("report", metavar="REPORT", help="a report.json file or the directory holding one")
    p.set_defaults(func=_cmd_show)


# --- entry point --------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors name the close match of a mistyped command, option or choice.

    An option no command knows is reported by the command's own parser, with its usage: argparse would
    report it at the top level, whose usage says nothing of the command's options.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the top level's, set by build_parser

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self.commands.get(getattr(namespace, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(parser._named(a) for a in extras)}")
        return namespace

    def _named(self, argument: str) -> str:
        """An argument as typed, with the option it may be a typo of (``--ofline`` -> ``--offline``)."""
        if not argument.startswith("-"):
            return argument
        options = [o for action in self._actions for o in action.option_strings]
        return argument + did_you_mean(argument.split("=", 1)[0], options)

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value}{did_you_mean(str(value), choices)}; "
                                                 f"choose from {', '.join(choices)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradscope",
        description="Gradient-flow analysis for PyTorch models.",
        epilog=f"Set {DEBUG_ENV}=1 to see tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_info(sub)
    _add_analyze(sub)
    _add_demo(sub)
    _add_compare(sub)
    _add_show(sub)
    parser.commands = dict(sub.choices)
    for command in parser.commands.values():
        command.set_defaults(flags=option_flags(command))
    return parser


# Python's name of an option, where it is not the flag's: analyze(config=AnalyzeConfig(what_ifs=...)),
# Report.save(formats=...), demo(train_steps=...); --offline sets HF_HUB_OFFLINE=1, which Python users set.
_PYTHON_NAMES = {"what_if": "what_ifs", "format": "formats", "out": "directory", "train": "train_steps",
                 "offline": "HF_HUB_OFFLINE=1"}


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The Python name of each of a command's options (what library messages name) -> its flag."""
    flags = {}
    for action in parser._actions:
        long_flags = [o for o in action.option_strings if o.startswith("--")]
        if long_flags and action.dest != "help":
            flags[action.dest] = long_flags[0]
            if action.dest in _PYTHON_NAMES:
                flags[_PYTHON_NAMES[action.dest]] = long_flags[0]
    return flags


def unexpected_error_lines(exc: BaseException) -> list[str]:
    """What the command prints for an error it did not expect: its type and message, and how to see more."""
    return [f"gradscope: error: {with_type(exc)}",
            f"gradscope: this was not expected; rerun with {DEBUG_ENV}=1 to see the traceback"]


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that what is under way is undone as for Ctrl-C."""


def _terminated(signum, frame):
    raise Terminated


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # imports the commands' modules: Ctrl-C can come here too
    except KeyboardInterrupt:
        if _debug():
            raise
        say("gradscope: interrupted", sys.stderr)
        return 130
    with _sigterm_as_exception(), warnings.catch_warnings():
        warnings.showwarning = _warning_printer(getattr(args, "flags", {}))
        return _run(args)


@contextlib.contextmanager
def _sigterm_as_exception():
    """SIGTERM raises :class:`Terminated` while a command runs (main thread only); the old handler after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(args: argparse.Namespace) -> int:
    """Run the command; known errors become one line and an exit code."""
    try:
        return args.func(args)
    except GradscopeError as exc:
        if _debug():
            raise
        say(f"gradscope: error: {in_flag_terms(str(exc), args.flags)}", sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if _debug():
            raise
        print("gradscope: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        if _debug():
            raise
        print("gradscope: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, what a shell reports for a tool ended by it
    except BrokenPipeError:  # the reader left (`gradscope demo | head`): stop quietly, as other tools do
        try:  # so the exit flush cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # an in-process stdout without a file descriptor: nothing to flush
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    except Exception as exc:  # last resort: one line, not a traceback, for what the cases above do not know
        if _debug():
            raise
        say("\n".join(unexpected_error_lines(exc)), sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
