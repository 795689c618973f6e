"""What every ``python -m hpc_fcn.<app> CONFIG [key=value ...]`` command does first, alike on every rank."""
from __future__ import annotations

import argparse
import logging
from typing import Any, Callable, Sequence


def parse_command(prog: str, description: str, config_example: str, override_example: str,
                  argv: Sequence[str]) -> argparse.Namespace:
    """The command line: one YAML config and dotted ``key=value`` overrides."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("config", help=f"YAML config, e.g. {config_example}")
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {override_example}")
    return p.parse_args(list(argv))


def start(cls: type, args: argparse.Namespace, comm, paths_of: Callable[[Any], Any] | None = None
          ) -> tuple[Any, logging.Logger]:
    """Load and validate the config, check the paths it names (``paths_of``: the part that names them),
    then log with the rank in the prefix and set the threads: a bad config fails here, on every rank."""
    from .config import load_config
    from .paths import check_paths
    from .runtime import set_threads, setup_logging
    cfg = load_config(cls, args.config, args.overrides)
    check_paths(paths_of(cfg) if paths_of is not None else cfg)
    logger = setup_logging(comm.rank, cfg.log_level)
    set_threads(comm, cfg.parallel.threads)
    return cfg, logger
