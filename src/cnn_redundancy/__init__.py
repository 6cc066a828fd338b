"""cnn-redundancy: find, explain and remove redundancy in trained PyTorch CNNs.

The public surface: every analysis and its result, ``analyze`` (every lens at once) and ``compress``
(a smaller model with a guarantee verified on held-out data), models, data, training and checkpoints. The shared mechanics (hooks, tracing, the sweep engine, the registry)
live in :mod:`cnn_redundancy.core`.

Example:
    >>> import cnn_redundancy as cr
    >>> model = cr.get_model("lenet5")
    >>> cr.conv_layers(model)
    ['conv1', 'conv2']
    >>> [a.name for a in cr.list_analyses()][:3]
    ['channel-shuffle', 'pixel-shuffle', 'impulse']
"""

from __future__ import annotations

from .analyses.ablation import AblationResult, zero_ablation
from .analyses.activation_labels import LabelResult, strongest_activation_labels
from .analyses.cka import CKAResult, cka
from .analyses.dead import DeadResult, dead_kernels
from .analyses.distinctiveness import DistinctivenessResult, distinctiveness
from .analyses.impulse import ImpulseResult, impulse_response
from .analyses.scores import KernelScoresResult, kernel_scores
from .analyses.shuffle import ShuffleResult, channel_shuffle, pixel_shuffle
from .checkpoint import CheckpointError, load_checkpoint, register_surgery, save_checkpoint
from .compression.compress import CompressResult, compress
from .compression.pruning import (
    DistinctivenessImportance,
    FPGMImportance,
    PruneResult,
    SeededRandomImportance,
    prune,
)
from .compression.pruning.trials import HeadToHeadResult, TrialsResult, head_to_head, pruning_trials
from .compression.removal import BranchRemoved, RemovalResult, remove_branches, remove_trivial
from .compression.skipnet import RouterResult, SkipNetwork, predict_exits, train_router, train_skip_network
from .core.cost import count_macs, count_macs_params, measure_latency
from .core.layers import conv_layers
from .core.metrics import Accuracy, Dice, Metric, get_metric
from .core.progress import set_progress
from .core.registry import get_analysis, list_analyses
from .core.results import Result
from .core.structure import decomposition_layers, layer_blocks, residual_blocks
from .data import DatasetNotFoundError, load_dataset, subset
from .experiments.layer_skipping import LayerSkippingResult, layer_skipping_experiment
from .models import get_model, list_models, register_model
from .survey import AnalysisResult, analyze
from .training import InputShift, evaluate, fit, input_shift, recompute_bn_stats, seed_everything

__version__ = "0.1.0"

__all__ = [
    "AblationResult",
    "Accuracy",
    "AnalysisResult",
    "analyze",
    "BranchRemoved",
    "channel_shuffle",
    "CheckpointError",
    "cka",
    "CKAResult",
    "compress",
    "CompressResult",
    "conv_layers",
    "count_macs",
    "count_macs_params",
    "DatasetNotFoundError",
    "dead_kernels",
    "DeadResult",
    "decomposition_layers",
    "Dice",
    "distinctiveness",
    "DistinctivenessImportance",
    "DistinctivenessResult",
    "evaluate",
    "fit",
    "FPGMImportance",
    "get_analysis",
    "get_metric",
    "get_model",
    "head_to_head",
    "HeadToHeadResult",
    "impulse_response",
    "ImpulseResult",
    "InputShift",
    "input_shift",
    "kernel_scores",
    "KernelScoresResult",
    "LabelResult",
    "layer_blocks",
    "layer_skipping_experiment",
    "LayerSkippingResult",
    "list_analyses",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "measure_latency",
    "Metric",
    "pixel_shuffle",
    "predict_exits",
    "prune",
    "PruneResult",
    "pruning_trials",
    "recompute_bn_stats",
    "register_model",
    "register_surgery",
    "RemovalResult",
    "remove_branches",
    "remove_trivial",
    "residual_blocks",
    "Result",
    "RouterResult",
    "save_checkpoint",
    "seed_everything",
    "SeededRandomImportance",
    "set_progress",
    "ShuffleResult",
    "SkipNetwork",
    "strongest_activation_labels",
    "subset",
    "train_router",
    "train_skip_network",
    "TrialsResult",
    "zero_ablation",
]
