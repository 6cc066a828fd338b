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
import socket
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
    terminate = _SigtermStop()
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
        terminate.close()


class _SigtermStop:
    """SIGTERM (a scheduler's time limit, ``kill``, torchrun stopping its workers) stops a command as Ctrl-C
    does: the partial results and the report are written and the command says so, where Python's default
    would end the process at once. A process waiting inside a collective for one that no longer answers
    cannot run Python's handler until the wait times out (30 minutes by default): it ends after
    ``CNN_REDUNDANCY_SIGTERM_GRACE`` seconds (default 30, as long as Slurm waits before SIGKILL) with
    status 143, as without the handler. Only in the main thread; :meth:`close` gives everything back,
    and a forked child (a DataLoader worker) gets it back at once: its signals are its own."""

    active: _SigtermStop | None = None

    def __init__(self) -> None:
        self.old = None
        if threading.current_thread() is not threading.main_thread():
            return
        self.done = threading.Event()
        self.grace = float(os.environ.get("CNN_REDUNDANCY_SIGTERM_GRACE", "30"))
        reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        # the interpreter's own signal handler writes each signal's number here at once, even while the main
        # thread is inside a C call; the watcher thread reads it
        self.old_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        self.old = signal.signal(signal.SIGTERM, _interrupt)
        threading.Thread(target=self._watch, args=(reader,), daemon=True, name="sigterm-grace").start()
        _SigtermStop.active = self

    @staticmethod
    def _in_child() -> None:
        stop = _SigtermStop.active
        if stop is not None and stop.old is not None:
            signal.signal(signal.SIGTERM, stop.old)
            signal.set_wakeup_fd(stop.old_fd)  # not the parent's watcher
            _SigtermStop.active = None

    def _watch(self, reader: socket.socket) -> None:
        with reader:
            while got := reader.recv(64):  # b"" once close() has closed the other end
                if signal.SIGTERM in got:
                    if not self.done.wait(self.grace):
                        os.write(2, f"stopped: SIGTERM, and the command had not stopped {self.grace:g} s later "
                                    "(waiting for another process?)\n".encode())  # fmt: skip
                        os._exit(128 + signal.SIGTERM)
                    return

    def close(self) -> None:
        if self.old is None:
            return
        _SigtermStop.active = None
        self.done.set()
        signal.signal(signal.SIGTERM, self.old)
        signal.set_wakeup_fd(self.old_fd)
        self.writer.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


os.register_at_fork(after_in_child=_SigtermStop._in_child)


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
