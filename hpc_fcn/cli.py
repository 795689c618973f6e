"""What every ``python -m hpc_fcn.<app> CONFIG [key=value ...]`` command does first, alike on every rank."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence


def _rank0() -> bool:
    from .runtime import world
    return world().rank == 0


class _Parser(argparse.ArgumentParser):
    """argparse that prints (usage, errors, --help, --version) on rank 0 only: under mpirun every rank parses
    the same command line, fails alike and exits with the same status, but the message appears once."""

    def _print_message(self, message: str, file=None) -> None:
        if message and _rank0():
            super()._print_message(message, file)


def _version() -> str:
    from . import __version__
    return f"hpc_fcn {__version__}"


def parse_command(prog: str, description: str, config_example: str, override_example: str,
                  argv: Sequence[str], schema: type | None = None) -> argparse.Namespace:
    """The command line: one YAML config and dotted ``key=value`` overrides; ``--print-config`` prints the
    config of ``schema`` they resolve to (every key with its documentation) and exits, as ``--version`` does."""
    p = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog=f"config keys: every key, its default and what it means:\n  {prog} --print-config\n"
                       f"the config a file and overrides resolve to:\n"
                       f"  {prog} --print-config {config_example} {override_example}")
    p.add_argument("config", nargs="?", help=f"YAML config, e.g. {config_example}")
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {override_example}")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (the defaults when no CONFIG is given) as YAML, each key under "
                        "a comment that says what it means, and exit")
    p.add_argument("--version", action="version", version=_version())
    args = p.parse_args(list(argv))
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # --print-config key=value: overrides of the defaults
        args.config = None
    if args.print_config and schema is not None:
        from .config import documented_yaml, load_config
        text = documented_yaml(load_config(schema, args.config, args.overrides))
        if _rank0():
            sys.stdout.write(text)
        p.exit(0)
    if args.config is None:
        p.error("the following arguments are required: config")
    return args


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
