"""Shared mechanics: every analysis is built from these and nothing else.

``layers`` (names, globs, modules), ``hooks`` (the only place hooks are registered; ``preserved``
leaves a model as found), ``graph`` (one fx trace per analysis; splits), ``observe`` (where an
activation is read), ``batches`` (the one batch loop; devices), ``sweep`` (the one perturbation
engine), ``structure`` (residual blocks, decomposition layers, layer blocks), ``metrics``,
``results`` (Result, JSON, partial results), ``cost`` (MACs, latency), ``progress`` and
``registry`` (what the command line and ``analyze`` enumerate).
"""
