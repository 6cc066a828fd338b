"""Each paper's reproduction: ``run(out, *, quick, seed, device, ...) -> report path``, registered for
``cnn-redundancy reproduce <name>``. Importing this package registers them all."""

from . import ablation, compression, distinctiveness, impulse, layer_skipping, overparameterization  # noqa: F401
