"""The FourCastNet network and its checkpoints."""
from .afnonet import AFNO2D, AFNONet, Block, PrecipNet, count_parameters, mode_window, spectral_block_mlp, unpatchify
from .checkpoint import CheckpointError, build_model, extract_state_dict, infer_model_config, load_checkpoint, save_checkpoint

__all__ = ["AFNO2D", "AFNONet", "Block", "PrecipNet", "CheckpointError", "build_model", "count_parameters",
           "extract_state_dict", "infer_model_config", "load_checkpoint", "mode_window", "save_checkpoint",
           "spectral_block_mlp", "unpatchify"]
