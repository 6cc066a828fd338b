"""The registry of analyses and experiments: what the command line and ``analyze`` enumerate.

An analysis registers itself with :func:`analysis`::

    @analysis("channel-shuffle", paper="impulse", result=ShuffleResult, needs_data=True,
              options=[option("repeats", "independent shuffles per channel")])
    def channel_shuffle(model, data, layers=None, *, ...): ...

and gets, without writing them, a command (``cnn-redundancy channel-shuffle``), a place in
``analyze`` and the contract tests of ``tests/contracts`` (model left as found, same seed same
JSON, JSON round trip, a figure, Dataset = DataLoader, the device honoured).

Every registered function has the shape ``fn(model, data, layers=None, *, batch_size, seed,
device, progress, partial, ...)``; ``observe=`` where it reads activations and ``metric=`` where
it evaluates the model. ``data`` may be ``None`` where ``needs_data`` is False.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Analysis",
    "Experiment",
    "Option",
    "option",
    "analysis",
    "experiment",
    "list_analyses",
    "get_analysis",
    "list_experiments",
    "get_experiment",
    "PAPERS",
    "COMMON",
]

#: the papers (``shared/papers``) the analyses come from
PAPERS = {
    "impulse": "Sathish & Sheet, Unit impulse response as an explainer of redundancy in a deep convolutional neural network",
    "distinctiveness": "Convoluted Cuts: distinctiveness pruning on convolutional kernels",
    "ablation": "Is each layer non-trivial in CNN?",
    "skipping": "Elimination of irrelevant layers in CNNs (layer skipping by strongest activations)",
    "toolkit": "cnn-redundancy's own lenses: dead kernels, L1 and Taylor scores, linear CKA across depth",
    "overparameterization": "The four papers' shared explanation: redundancy grows with over-parameterization",
}
#: the keyword-only arguments every analysis takes
COMMON = ("batch_size", "seed", "device", "progress", "partial")

_REGISTRY: dict[str, Analysis] = {}
_EXPERIMENTS: dict[str, Experiment] = {}


@dataclasses.dataclass(frozen=True)
class Option:
    """A method option exposed on the command line: the function's keyword ``name``.

    The flag is ``--name`` (underscores as dashes); the default and the type come from the
    function's signature unless given. ``nargs="*"`` takes a list; ``choices`` restricts values.
    """

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    nargs: str | int | None = None


def option(name: str, help: str, **kw: Any) -> Option:
    """Shorthand for :class:`Option`."""
    return Option(name, help, **kw)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A registered analysis.

    Attributes:
        name: its command and key (``"channel-shuffle"``). fn: the function. result: its Result class.
        paper: key of :data:`PAPERS`. needs_data: whether ``data`` is required.
        summary: one line for ``--help`` and the report. options: its command-line options.
        example: keyword arguments that keep it small on the tiny test models (contract tests).
    """

    name: str
    fn: Callable[..., Any]
    result: type
    paper: str
    needs_data: bool
    summary: str
    options: tuple[Option, ...] = ()
    example: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.fn).parameters)

    @property
    def observes(self) -> bool:
        """Whether it reads activations (takes ``observe=``)."""
        return "observe" in self.parameters

    @property
    def evaluates(self) -> bool:
        """Whether it evaluates the model's metric (takes ``metric=``)."""
        return "metric" in self.parameters

    @property
    def reads_output(self) -> bool:
        """Whether it reads the model's output itself, not through a metric (takes ``output=``: the key or
        index of that output, for a model returning a dict or tuple)."""
        return "output" in self.parameters


def analysis(
    name: str,
    *,
    paper: str,
    result: type,
    needs_data: bool = True,
    options: Sequence[Option] = (),
    example: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the analysis ``name`` (see the module docstring); ``fn`` is returned unchanged.

    Raises:
        TypeError: the function does not have the shared shape (checked at registration).
    """
    if paper not in PAPERS:
        raise ValueError(f"paper must be one of {', '.join(PAPERS)}, not {paper!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(fn).parameters.values())
        head = [p.name for p in params[:3]]
        if head != ["model", "data", "layers"]:
            raise TypeError(f"{fn.__name__} must start with (model, data, layers), not ({', '.join(head)})")
        kwonly = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        missing = [c for c in COMMON if c not in kwonly]
        if missing:
            raise TypeError(f"{fn.__name__} lacks the keyword-only arguments {', '.join(missing)}")
        unknown = [o.name for o in options if o.name not in kwonly]
        if unknown:
            raise TypeError(f"{fn.__name__} has no keyword-only argument {', '.join(unknown)} for its options")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Analysis(name, fn, result, paper, needs_data, doc[0] if doc else name, tuple(options),
                                   dict(example or {}))
        return fn

    return deco


def _load() -> None:
    from .. import analyses  # noqa: F401  (each module registers its analyses on import)


def list_analyses() -> list[Analysis]:
    """Every registered analysis, in the papers' order."""
    _load()
    order = list(PAPERS)
    return sorted(_REGISTRY.values(), key=lambda a: order.index(a.paper))


def get_analysis(name: str) -> Analysis:
    """The analysis registered as ``name``; an unknown name lists the registered ones."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown analysis {name!r}; registered: {', '.join(a.name for a in list_analyses())}")
    return _REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A paper's reproduction: ``run(out, *, quick=False, seed=0, device=None, **options) -> report path``.

    Attributes:
        name: its ``reproduce`` subcommand. run: the function. paper: key of :data:`PAPERS`.
        summary: one line for ``--help``. options: its command-line options.
    """

    name: str
    run: Callable[..., Any]
    paper: str
    summary: str
    options: tuple[Option, ...] = ()


def experiment(name: str, *, paper: str, options: Sequence[Option] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``run`` as the reproduction ``name`` (``cnn-redundancy reproduce <name>``)."""
    if paper not in PAPERS:
        raise ValueError(f"paper must be one of {', '.join(PAPERS)}, not {paper!r}")

    def deco(run: Callable[..., Any]) -> Callable[..., Any]:
        params = inspect.signature(run).parameters
        missing = [p for p in ("out", "quick", "seed", "device") if p not in params]
        if missing:
            raise TypeError(f"{run.__name__} lacks the arguments {', '.join(missing)}")
        doc = (run.__doc__ or "").strip().splitlines()
        _EXPERIMENTS[name] = Experiment(name, run, paper, doc[0] if doc else name, tuple(options))
        return run

    return deco


def list_experiments() -> list[Experiment]:
    """Every registered reproduction, in the papers' order."""
    from .. import experiments  # noqa: F401  (each module registers its experiment on import)

    order = list(PAPERS)
    return sorted(_EXPERIMENTS.values(), key=lambda e: order.index(e.paper))


def get_experiment(name: str) -> Experiment:
    """The reproduction registered as ``name``."""
    known = {e.name: e for e in list_experiments()}
    if name not in known:
        raise ValueError(f"Unknown experiment {name!r}; registered: {', '.join(known)}")
    return known[name]
