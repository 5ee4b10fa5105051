"""The QAA place-recognition model: DINOv2 backbone + aggregation head, loading and saving."""

from .backbone import DINOv2Backbone, convert_dinov2_state_dict
from .checkpoint import CheckpointError, load_dinov2_weights, load_model, save_checkpoint
from .qaa import QAAAggregator
from .vpr_model import ModelConfigError, VPRModel, build_model

__all__ = [
    "CheckpointError",
    "DINOv2Backbone",
    "ModelConfigError",
    "QAAAggregator",
    "VPRModel",
    "build_model",
    "convert_dinov2_state_dict",
    "load_dinov2_weights",
    "load_model",
    "save_checkpoint",
]
