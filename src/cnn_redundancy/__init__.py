"""cnn-redundancy: find, explain and remove redundancy in trained PyTorch CNNs.

Example:
    >>> import cnn_redundancy as cr
    >>> model = cr.get_model("lenet5")
    >>> cr.conv_layers(model)
    ['conv1', 'conv2']
"""

from __future__ import annotations

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
from .results import Result
from .training import evaluate, fit, seed_everything

__version__ = "0.1.0"

__all__ = [
    "pruning_trials",
    "head_to_head",
    "TrialsResult",
    "prune",
    "SeededRandomImportance",
    "PruneResult",
    "DistinctivenessImportance",
    "distinctiveness",
    "DistinctivenessResult",
    "Accuracy",
    "CheckpointError",
    "DatasetNotFoundError",
    "Dice",
    "Result",
    "Split",
    "SplitUnavailable",
    "as_loader",
    "capture",
    "conv_layers",
    "cosine_per_channel",
    "default_observe",
    "eval_mode",
    "evaluate",
    "fit",
    "get_metric",
    "get_model",
    "hook_count",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "ncc_matrix",
    "preserved",
    "register_model",
    "register_surgery",
    "replace_input",
    "replace_output",
    "resolve_layer",
    "resolve_layers",
    "save_checkpoint",
    "seed_everything",
    "set_progress",
    "subset",
]
