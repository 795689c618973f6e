"""Every numeric and date field of the ensemble config is range-checked when the config is read, before any
work, and the error names the key; every field either changes the run identity or declares why it cannot."""
import dataclasses
import typing
from pathlib import Path

import pytest

from hpc_fcn.config import ConfigError, from_dict
from hpc_fcn.ensemble.config import EnsembleConfig
from hpc_fcn.ensemble.identity import check_resume, exemption, run_identity, schema_fields
from hpc_fcn.runtime import UserError

# one out-of-range value for every numeric or date field (the test below checks that the table is complete)
BAD = {
    "model.img_size": "[0, 64]", "model.patch_size": "0", "model.embed_dim": "0", "model.depth": "0",
    "model.mlp_ratio": "0", "model.num_blocks": "7", "model.sparsity_threshold": "-0.1",
    "model.hard_thresholding_fraction": "1.5", "model.seed": "-1", "model.noise_dim": "0",
    "model.noise_blocks": "0", "model.noise_length_km": "-1", "model.noise_memory_hours": "-1",
    "model.noise_scale": "0",
    "parallel.ensemble": "0", "parallel.h": "0", "parallel.w": "0", "parallel.matmul": "0", "parallel.threads": "-1",
    "inference.members_per_pass": "-1",
    "initial_conditions.times": "[2005-13-01T00]", "initial_conditions.start": "2005-13-45",
    "initial_conditions.end": "2005-02-30T00", "initial_conditions.every": "0h", "initial_conditions.count": "0",
    "ensemble.members": "0", "ensemble.seed": str(2 ** 70), "ensemble.lagged": "0", "ensemble.lag": "5x",
    "perturbation.amplitude": "-0.1", "perturbation.channel_amplitude": "{u: -1}",
    "perturbation.length_scale_km": "0", "perturbation.bred_cycles": "0", "perturbation.bred_steps": "0",
    "perturbation.analysis_scale": "-1",
    "forecast.lead_time": "3x", "forecast.output_every": "0", "forecast.snapshot_every": "0",
    "scoring.table_leads": "[5x]",
    "products.probabilities": "{u: {above: [.nan]}}", "products.quantiles": "[1.5]",
}
DATES = {"initial_conditions.times", "initial_conditions.start", "initial_conditions.end",
         "initial_conditions.every", "forecast.lead_time", "scoring.table_leads", "ensemble.lag"}


def _numeric(tp) -> bool:
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(tp) if a is not bool)


def _leaf_types():
    out = {}
    for name, owner in schema_fields(EnsembleConfig):
        out[name] = typing.get_type_hints(owner)[name.rsplit(".", 1)[-1]]
    return out


def test_every_numeric_and_date_field_has_an_out_of_range_case():
    checked = {name for name, tp in _leaf_types().items() if _numeric(tp)} | DATES
    assert checked - set(BAD) == set()


@pytest.mark.parametrize("key", sorted(BAD))
def test_an_out_of_range_value_is_refused_naming_its_key(key):
    with pytest.raises(ConfigError) as err:
        from_dict(EnsembleConfig, {}, [f"{key}={BAD[key]}"])
    msg = str(err.value)
    assert f"'{key}" in msg and "\n" not in msg, msg


# ---- the run identity: every field changes it, or declares why it cannot ------------------------------
def _other(value, tp):
    """A value of type ``tp`` different from ``value`` (identity only: not validated)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return next(a for a in args if a != value)
    if tp is bool:
        return not value
    if value is None:
        return _other(None, args[0]) if args and typing.get_origin(args[0]) is not typing.Literal else "x"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return (value[0] + 1,) + tuple(value[1:])
    if isinstance(value, list) or origin is list:
        return list(value or []) + ["x"]
    if isinstance(value, dict) or origin is dict:
        return {**(value or {}), "x": 0.5}
    raise AssertionError(f"no other value for {value!r} of {tp}")


def _changed(cfg, dotted: str, tp):
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: _other(getattr(cfg, head), tp)})
    return dataclasses.replace(cfg, **{head: _changed(getattr(cfg, head), rest, tp)})


def test_every_field_changes_the_identity_or_declares_why_not():
    """Changing a field on resume is refused in one line unless the schema exempts it with a reason."""
    base = from_dict(EnsembleConfig, {}, [])
    ident = run_identity(base, Path("."), ["2018-01-01T00"], 4, None)  # random weights: model.seed counts
    for name, owner in schema_fields(EnsembleConfig):
        tp = typing.get_type_hints(owner)[name.rsplit(".", 1)[-1]]
        other = run_identity(_changed(base, name, tp), Path("."), ["2018-01-01T00"], 4, None)
        reason = exemption(name, owner)
        if reason is not None:
            assert other == ident and len(reason) > 10, name
            continue
        with pytest.raises(UserError) as err:
            check_resume(ident, other, Path("out"))
        assert name in str(err.value) and "\n" not in str(err.value), name


# ---- members against the memory the layout needs, before any work -------------------------------------
def _one_line(proc, key):
    from ensemble_setup import error_lines
    lines = error_lines(proc)
    assert proc.returncode != 0 and len(lines) == 1 and f"config key '{key}'" in lines[0], proc.stderr[-2000:]
    return lines[0]


def test_too_many_members_are_refused_in_seconds_on_every_rank(tmp_path):
    """Checked on the resolved layout against the node's free memory (the facts' memory model)."""
    import time
    from ensemble_setup import run_cli, tiny_config, tiny_dataset
    from hpc_fcn.config import dump_yaml
    cfg = tmp_path / "run.yaml"
    cfg.write_text(dump_yaml(tiny_config(tiny_dataset(tmp_path / "data"), tmp_path / "out")))
    t0 = time.monotonic()
    line = _one_line(run_cli(2, cfg, f"ensemble.members={10 ** 9}"), "ensemble.members")
    assert time.monotonic() - t0 < 60 and "ensemble=2" in line and "free" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_too_many_members_are_refused_before_the_builtin_dataset_is_generated(tmp_path):
    from ensemble_setup import CLI_ENV, ROOT
    import subprocess
    import sys
    empty = tmp_path / "no_dataset_yet"
    proc = subprocess.run([sys.executable, "-m", "hpc_fcn.ensemble", str(ROOT / "config" / "ens100.yaml"),
                           f"ensemble.members={10 ** 9}", f"output.dir={tmp_path / 'out'}"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=dict(CLI_ENV, HPC_FCN_DATA=str(empty)))
    assert "states alone" in _one_line(proc, "ensemble.members")
    assert not empty.exists()
