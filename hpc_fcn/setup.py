"""The set-up the ensemble and training applications share: data root, this rank's device, serial model, grid.

Each fact is decided here once: where ``data.root`` points (``builtin`` generated on first use), which
device a rank computes on (one GPU per rank, chosen by its local rank and made current before any
CUDA work), which weights the serial model has (a checkpoint's config wins over the config file's)
and the process grid (built on the indexed device, so communicators, streams and events use it).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from .config import ConfigError, given_keys
from .model.afnonet import NOISE_PROCESS_KEYS
from .runtime import UserError

log = logging.getLogger("hpc_fcn")
BUILTIN_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "builtin_model.ckpt"
BUILTIN_STOCHASTIC = BUILTIN_CHECKPOINT.with_name("builtin_stochastic.ckpt")


def data_root(data_cfg, comm) -> Path:
    """``data.root`` as a directory; ``builtin`` generates the built-in dataset on first use."""
    if data_cfg.root == "builtin":
        from .data.builtin import ensure_builtin
        return Path(ensure_builtin(comm))
    root = Path(data_cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"config key 'data.root': {root} is not a directory; point it at the FourCastNet-layout data")
    return root


def rank_device(requested: str, comm=None, key: str = "inference.device", local_rank: int | None = None
                ) -> torch.device:
    """The device ``requested`` (auto|cpu|cuda) means on this rank; a GPU is made this process' current one.

    One GPU per rank: ``local_rank``, else the rank's index among the ranks of its node (``comm``),
    else the launcher's local-rank variable, modulo the GPUs it sees; made current, so ``cuda``
    tensors, NCCL groups, streams and events that name no index land on it too.
    """
    from .accel.device import select_device
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config key '{key}': cuda was asked for but torch sees no CUDA GPU on this node; "
                        "use auto or cpu")
    if local_rank is None and comm is not None and requested != "cpu" and torch.cuda.is_available():
        from .runtime import local_rank as node_rank
        local_rank = node_rank(comm)
    device = select_device(requested, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def checkpoint_path(ck: str, stochastic: bool = False) -> Path:
    """The file ``model.checkpoint`` names (``builtin``: the committed model, or its stochastic version)."""
    if ck == "builtin":
        path = BUILTIN_STOCHASTIC if stochastic else BUILTIN_CHECKPOINT
        recipe = "train_stochastic" if stochastic else "train_builtin"
        if not path.is_file():
            raise ConfigError("config key 'model.checkpoint': the built-in model is not installed "
                              f"({path} is missing); train it with python -m hpc_fcn.train config/{recipe}.yaml")
        return path
    path = Path(ck).expanduser()
    if not path.is_file():
        raise ConfigError(f"config key 'model.checkpoint': {path} does not exist")
    return path


def serial_model(model_cfg, n_chans: int, grid_shape: tuple[int, int], add_noise: bool = False):
    """The serial AFNONet: the checkpoint's (``builtin`` = the committed model) or seeded random weights.

    ``model.stochastic`` asks for a stochastic model (token noise, :func:`hpc_fcn.model.afnonet.add_noise`):
    a deterministic checkpoint is refused, unless ``add_noise`` (training) gives it a new noise
    projection seeded by ``model.seed``. Returns the model in eval mode and the model config actually
    used (the checkpoint's wins).
    """
    from .model import AFNONet, load_checkpoint
    ck = model_cfg.checkpoint
    if ck is None:
        torch.manual_seed(model_cfg.seed)
        model = AFNONet(**model_cfg.kwargs(n_chans, n_chans))
        mcfg = model_cfg
    else:
        model = load_checkpoint(checkpoint_path(ck, model_cfg.stochastic))
        if model_cfg.stochastic and not getattr(model, "noise_dim", 0):
            if not add_noise:
                raise ConfigError(f"config key 'model.stochastic': the checkpoint {ck} is a deterministic model; use a "
                                  "stochastic one (python -m hpc_fcn.train config/train_stochastic.yaml makes the "
                                  "built-in one) or set model.stochastic: false")
            model = with_new_noise(model, model_cfg.noise_dim, model_cfg.seed, model_cfg.noise_blocks,
                                   model_cfg.noise_length_km, model_cfg.noise_memory_hours)
        mcfg = checkpoint_model_config(model_cfg, model)
        refuse_ignored_keys(model_cfg, mcfg, ck)
        if model.in_chans != n_chans or model.out_chans != n_chans:
            raise ConfigError(f"config key 'data.channels': the checkpoint has {model.in_chans} input and "
                              f"{model.out_chans} output channels but {n_chans} channels are selected")
    if tuple(mcfg.img_size) != tuple(grid_shape):
        raise ConfigError(f"config key 'model.img_size': the model grid {tuple(mcfg.img_size)} does not match the "
                          f"data's model grid {tuple(grid_shape)}")
    return model.eval(), mcfg


def with_new_noise(model, noise_dim: int, seed: int, noise_blocks: int = 1, noise_length_km: float = 0.0,
                   noise_memory_hours: float = 0.0):
    """A copy of the deterministic AFNONet ``model`` with new token-noise projections (seeded, small) into the
    embedding and, with ``noise_blocks`` > 1, before the next blocks, for the given noise process."""
    from .model import AFNONet
    net = AFNONet(**dict(model.config(), noise_dim=noise_dim, noise_blocks=noise_blocks,
                         noise_length_km=noise_length_km, noise_memory_hours=noise_memory_hours))
    net.load_state_dict(model.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "noise_proj" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    return net.eval()


def checkpoint_model_config(model_cfg, model):
    """``model_cfg`` with the architecture fields replaced by those the checkpoint ``model`` was built with."""
    mc = model.config()
    noise = int(mc.get("noise_dim", 0))
    return replace(model_cfg, img_size=tuple(mc["img_size"]), patch_size=int(mc["patch_size"][0]),
                   embed_dim=mc["embed_dim"], depth=mc["depth"], mlp_ratio=float(mc["mlp_ratio"]),
                   num_blocks=mc["num_blocks"], sparsity_threshold=mc["sparsity_threshold"],
                   hard_thresholding_fraction=mc["hard_thresholding_fraction"],
                   noise_dim=noise or model_cfg.noise_dim,
                   noise_blocks=int(mc.get("noise_blocks", 1)) if noise else model_cfg.noise_blocks,
                   **{k: float(mc.get(k, 0.0)) if noise else getattr(model_cfg, k) for k in NOISE_PROCESS_KEYS},
                   stochastic=bool(model_cfg.stochastic and noise))


ARCHITECTURE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "mlp_ratio", "num_blocks", "sparsity_threshold",
                     "hard_thresholding_fraction")


def refuse_ignored_keys(given_cfg, checkpoint_cfg, ck: str) -> None:
    """A ConfigError for an architecture key (or a stochastic checkpoint's noise process) that the config sets
    to another value than the checkpoint's."""
    keys = ARCHITECTURE_KEYS + (NOISE_PROCESS_KEYS if checkpoint_cfg.stochastic else ())
    for key in keys:
        if key not in given_keys(given_cfg):
            continue
        want, have = getattr(given_cfg, key), getattr(checkpoint_cfg, key)
        if (tuple(want) != tuple(have)) if isinstance(have, tuple) else (want != have):
            have_s = list(have) if isinstance(have, tuple) else have
            raise ConfigError(f"config key 'model.{key}': {list(want) if isinstance(want, tuple) else want} "
                              f"but the checkpoint {ck} has {have_s}, which it would use; remove the key or set it "
                              f"to {have_s}")


def process_grid(parallel_cfg, comm, device: torch.device, tracer=None):
    """The ensemble x h x w x matmul grid of ``comm``, its communicators on ``device`` (``cuda:N``, not ``cuda``)."""
    from .parallel.grid import ProcessGrid
    return ProcessGrid.from_config(parallel_cfg, comm, tracer=tracer, device=str(device))


__all__ = ["ARCHITECTURE_KEYS", "BUILTIN_CHECKPOINT", "BUILTIN_STOCHASTIC", "with_new_noise", "checkpoint_model_config", "checkpoint_path", "data_root",
           "process_grid", "rank_device", "refuse_ignored_keys", "serial_model"]
