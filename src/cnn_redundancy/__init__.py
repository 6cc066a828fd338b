"""cnn-redundancy: find, explain and remove redundancy in trained PyTorch CNNs.

Example:
    >>> import cnn_redundancy as cr
    >>> model = cr.get_model("lenet5")
    >>> cr.conv_layers(model)
    ['conv1', 'conv2']
"""

from __future__ import annotations

from .ablation import AblationResult, decomposition_layers, layer_blocks, residual_blocks, zero_ablation
from .checkpoint import CheckpointError, load_checkpoint, register_surgery, save_checkpoint
from .data import DatasetNotFoundError, as_loader, load_dataset, subset
from .distinctiveness import DistinctivenessResult, distinctiveness
from .graph import Split, SplitUnavailable, default_observe
from .hooks import capture, eval_mode, hook_count, preserved, replace_input, replace_output
from .layers import conv_layers, resolve_layer, resolve_layers
from .metrics import Accuracy, Dice, cosine_per_channel, get_metric, ncc_matrix
from .models import get_model, list_models, register_model
from .progress import set_progress
from .pruning import DistinctivenessImportance, PruneResult, SeededRandomImportance, prune
from .pruning_trials import TrialsResult, head_to_head, pruning_trials
from .removal import BranchRemoved, RemovalResult, remove_branches, remove_trivial
from .results import Result
from .routing import (
    LabelResult,
    LayerSkippingResult,
    layer_skipping_experiment,
    predict_exits,
    strongest_activation_labels,
    train_router,
)
from .skipnet import SkipNetwork, count_macs, train_skip_network
from .training import evaluate, fit, seed_everything

__version__ = "0.1.0"

__all__ = [
    "AblationResult",
    "Accuracy",
    "as_loader",
    "BranchRemoved",
    "capture",
    "CheckpointError",
    "conv_layers",
    "cosine_per_channel",
    "count_macs",
    "DatasetNotFoundError",
    "decomposition_layers",
    "default_observe",
    "Dice",
    "distinctiveness",
    "DistinctivenessImportance",
    "DistinctivenessResult",
    "eval_mode",
    "evaluate",
    "fit",
    "get_metric",
    "get_model",
    "head_to_head",
    "hook_count",
    "LabelResult",
    "layer_blocks",
    "layer_skipping_experiment",
    "LayerSkippingResult",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "ncc_matrix",
    "predict_exits",
    "preserved",
    "prune",
    "PruneResult",
    "pruning_trials",
    "register_model",
    "register_surgery",
    "RemovalResult",
    "remove_branches",
    "remove_trivial",
    "replace_input",
    "replace_output",
    "residual_blocks",
    "resolve_layer",
    "resolve_layers",
    "Result",
    "save_checkpoint",
    "seed_everything",
    "SeededRandomImportance",
    "set_progress",
    "SkipNetwork",
    "Split",
    "SplitUnavailable",
    "strongest_activation_labels",
    "subset",
    "train_router",
    "train_skip_network",
    "TrialsResult",
    "zero_ablation",
]
