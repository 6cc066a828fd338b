"""Command-line front end: ``cnn-redundancy <command> ...``.

The analysis commands and the ``reproduce`` subcommands are generated from the registries
(:mod:`.analyses`); the rest are ``train``, ``evaluate``, ``layers``, ``models``, ``report``,
``demo`` (:mod:`.basic`) and the commands returning a smaller model (:mod:`.compress`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings

__all__ = ["main", "build_parser"]

COMMAND_MODULES = [
    "cnn_redundancy.cli.basic",
    "cnn_redundancy.cli.analyze",
    "cnn_redundancy.cli.analyses",
    "cnn_redundancy.cli.compress",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnn-redundancy",
        description="Find, explain and remove redundancy in trained PyTorch CNNs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'cnn-redundancy <command> --help' for a command's options. 'make demo' runs the main job.",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    reproduce = sub.add_parser(
        "reproduce",
        help="reproduce a paper's experiments on the bundled data",
        description="Reproduce a paper's experiments on the bundled data and write tables, figures and a report section.",
    )
    rsub = reproduce.add_subparsers(dest="experiment", metavar="<experiment>", required=True)
    for name in COMMAND_MODULES:
        mod = importlib.import_module(name)
        mod.register(sub)
        if hasattr(mod, "register_reproduce"):
            mod.register_reproduce(rsub)
    _quiet_anywhere(parser)
    return parser


def _quiet_anywhere(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` after the command too (``cnn-redundancy analyze ... --quiet``), not only before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():  # aliases share a parser
                if not any("--quiet" in a.option_strings for a in sub._actions):
                    sub.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                                     help="no progress bars (also before the command)")  # fmt: skip
                _quiet_anywhere(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..core.distributed import launched
    from ..core.progress import set_progress
    from .common import dataset_from_args

    if args.quiet:
        set_progress(False)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line  # a user reads what happened, not the line of the toolkit that said it
    terminate = _stop_on_sigterm()
    try:
        with launched(getattr(args, "device", None)):  # under torchrun: join the process group
            if hasattr(args, "dataset"):  # before anything records the parameters: what --root holds, or the default
                dataset_from_args(args)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        if os.environ.get("RANK", "0") != "0":  # under torchrun every process is stopped: rank 0 says it once
            return 130
        print("interrupted" + (f"; files already written to {out} are kept (results still under way are marked "
                               '"complete": false); work that had written nothing yet is lost' if out else ""),
              file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def _stop_on_sigterm():
    """SIGTERM (a scheduler's time limit, ``kill``, torchrun stopping its workers) stops a command as Ctrl-C
    does: the partial results and the report are written and the command says so, where Python's default
    would end the process at once. Returns the handler it replaced (``None`` outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
