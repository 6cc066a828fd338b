"""Command-line front end: ``cnn-redundancy <command> ...``.

The analysis commands and the ``reproduce`` subcommands are generated from the registries
(:mod:`.analyses`); the rest are ``train``, ``evaluate``, ``layers``, ``models``, ``report``,
``demo`` (:mod:`.basic`) and the commands returning a smaller model (:mod:`.compress`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import signal
import socket
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

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
        terminate.start()
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
        states = sorted(Path(out).glob("*.state.pt")) if out and hasattr(args, "resume") else []
        if states:
            print(f"the sweep's state at its last whole batch is in {states[0]}: the same command with --resume "
                  "continues it", file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        while True:  # a SIGTERM landing as the command ends must not leave the handler behind: close again
            try:
                terminate.close()
                break
            except KeyboardInterrupt:
                pass
        warnings.formatwarning = formatwarning


class _SigtermStop:
    """SIGTERM (a scheduler's time limit, ``kill``, torchrun stopping its workers) stops a command as Ctrl-C
    does: the partial results and the report are written and the command says so, where Python's default
    would end the process at once. A process waiting inside a collective for one that no longer answers
    cannot run Python's handler until the wait times out (30 minutes by default): it ends after
    ``CNN_REDUNDANCY_SIGTERM_GRACE`` seconds (default 30, as long as Slurm waits before SIGKILL) with
    status 143, as without the handler. Only in the main thread. :meth:`close` gives everything back
    (also when a signal lands in it), and a forked child (a DataLoader worker) gets it back before it
    can take a signal: SIGTERM is held across the fork."""

    active: _SigtermStop | None = None

    def __init__(self) -> None:
        self.old: Any = None  # the handler replaced, once replaced
        self.old_fd: int | None = None  # the wakeup descriptor replaced, once replaced
        self.writer: socket.socket | None = None
        self.done = threading.Event()

    def start(self) -> None:
        """Install the watcher, then the handler (last: a SIGTERM before it ends the process as it always did)."""
        if threading.current_thread() is not threading.main_thread():
            return
        raw = os.environ.get("CNN_REDUNDANCY_SIGTERM_GRACE", "30")
        try:
            self.grace = float(raw)
        except ValueError:
            self.grace = math.nan
        if not 0 <= self.grace <= 1e6:
            raise ValueError(f"CNN_REDUNDANCY_SIGTERM_GRACE must be a number of seconds from 0 to 1e6, not {raw!r}")
        reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        # the interpreter's own signal handler writes each signal's number here at once, even while the main
        # thread is inside a C call; the watcher thread reads it
        self.old_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(reader, self.old_fd), daemon=True, name="sigterm-grace").start()
        _SigtermStop.active = self
        self.old = signal.getsignal(signal.SIGTERM)  # kept before the swap: a signal may land right after it
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # Python's own Ctrl-C: KeyboardInterrupt

    def _watch(self, reader: socket.socket, passed_on: int) -> None:
        with reader:
            while got := reader.recv(64):  # b"" once close() has closed the other end
                if passed_on >= 0:  # the caller's own wakeup descriptor still gets every signal's number
                    with contextlib.suppress(OSError):
                        os.write(passed_on, got)
                if signal.SIGTERM in got and not self.done.is_set():
                    if not self.done.wait(self.grace):
                        os.write(2, f"stopped: SIGTERM, and the command had not stopped {self.grace:g} s later "
                                    "(waiting for another process?)\n".encode())  # fmt: skip
                        os._exit(128 + signal.SIGTERM)
                    return

    def close(self) -> None:
        from ..core.device import to_the_end

        def restore() -> None:  # safe to run again: a signal landing here starts it over (to_the_end)
            if self.old is not None:
                signal.signal(signal.SIGTERM, self.old)
            if self.old_fd is not None:
                signal.set_wakeup_fd(self.old_fd)
            _SigtermStop.active = None
            self.done.set()
            if self.writer is not None:
                self.writer.close()

        to_the_end(restore)

    @staticmethod
    def _before_fork() -> None:
        if _SigtermStop.active is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # held until the child has reset

    @staticmethod
    def _after_fork_in_parent() -> None:
        if _SigtermStop.active is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    @staticmethod
    def _after_fork_in_child() -> None:
        stop = _SigtermStop.active
        if stop is not None:
            _SigtermStop.active = None
            if stop.old is not None:
                signal.signal(signal.SIGTERM, stop.old)
            signal.set_wakeup_fd(stop.old_fd if stop.old_fd is not None else -1)  # not the parent's watcher
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a SIGTERM held meanwhile is its own


os.register_at_fork(before=_SigtermStop._before_fork, after_in_parent=_SigtermStop._after_fork_in_parent,
                    after_in_child=_SigtermStop._after_fork_in_child)  # fmt: skip


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
