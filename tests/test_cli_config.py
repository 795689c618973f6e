"""The command lines' help: every config key documented and printed with --print-config, --version, bad flags
reported once under mpirun, and the checks that need no data made before the built-in dataset is generated."""
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ensemble_setup import CLI_ENV, ROOT, command, error_lines

import hpc_fcn
from hpc_fcn.config import ConfigError, from_dict, key_doc, load_config, schema_keys, to_dict
from hpc_fcn.ensemble.config import EnsembleConfig
from hpc_fcn.ensemble.tune import TuneAppConfig
from hpc_fcn.train.config import TrainConfig

SCHEMAS = {"hpc_fcn.ensemble": (EnsembleConfig, "config/ens100.yaml"),
           "hpc_fcn.train": (TrainConfig, "config/train_builtin.yaml"),
           "hpc_fcn.ensemble.tune": (TuneAppConfig, "config/ens100.yaml")}


@pytest.mark.parametrize("cls", [EnsembleConfig, TrainConfig, TuneAppConfig], ids=lambda c: c.__name__)
def test_every_key_of_the_schema_is_documented(cls):
    """A key's documentation is its comment in the schema's source (on the field's line or just above it); a
    section's is its class docstring. A key added without one fails here."""
    keys = schema_keys(cls)
    assert len(keys) > 50
    missing = [k for k, doc in keys if not doc]
    assert not missing, f"document these keys with a comment on their line in the schema: {missing}"


def test_doc_is_the_fields_comment_or_the_sections_docstring():
    from hpc_fcn.ensemble.config import ForecastConfig
    from hpc_fcn.train.config import LossConfig
    assert key_doc(ForecastConfig, "lead_time") == "'10d', '240h' or a number of 6-hourly steps"
    assert key_doc(LossConfig, "spectral_weight").startswith("crps: add this weight x the fair CRPS")  # lines above
    assert key_doc(EnsembleConfig, "forecast") == ForecastConfig.__doc__
    assert key_doc(TuneAppConfig, "resume") == key_doc(EnsembleConfig, "resume")  # inherited keys keep their doc


def _flat(data, prefix=""):
    """Dotted keys of nested YAML data (entries of a mapping of sections included)."""
    out = []
    for k, v in data.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
    return out


def _check_printed(text, cls, cfg):
    """Every key of ``cfg`` is printed under a comment line holding its documentation; it reads back as ``cfg``."""
    assert to_dict(from_dict(cls, yaml.safe_load(text))) == to_dict(cfg)
    lines = text.splitlines()
    printed = _flat(yaml.safe_load(text))
    docs = dict(schema_keys(cls))
    want = {k for k in _flat(to_dict(cfg))}
    assert set(printed) == want
    path, seen, flow = [], [], []  # flow: keys whose value is written on their line (e.g. {u: 0.1, v: 0.2})
    for n, line in enumerate(lines):  # each schema key's line is preceded by its documentation
        if line.lstrip().startswith("#"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        path = path[:depth] + [line.strip().split(":", 1)[0]]
        seen.append(".".join(path))
        if not line.endswith(":"):
            flow.append(seen[-1])
        schema_key = ".".join(p if not (i and path[i - 1] == "phases") else "<name>" for i, p in enumerate(path))
        if schema_key in docs:  # else the name of a phase: the user's key, documented by 'phases'
            assert lines[n - 1] == f"{'  ' * depth}# {docs[schema_key]}", seen[-1]
    assert seen == [k for k in printed if not any(k.startswith(f + ".") for f in flow)]


def test_print_config_prints_the_resolved_config_with_every_key_documented():
    proc = subprocess.run([sys.executable, "-m", "hpc_fcn.ensemble", "--print-config", "config/ens100.yaml",
                           "forecast.lead_time=3d", "ensemble.members=7"], capture_output=True, text=True,
                          env=CLI_ENV, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(EnsembleConfig, ROOT / "config/ens100.yaml", ["forecast.lead_time=3d", "ensemble.members=7"])
    _check_printed(proc.stdout, EnsembleConfig, cfg)
    assert "  lead_time: 3d\n" in proc.stdout and "  members: 7\n" in proc.stdout


@pytest.mark.parametrize("module", ["hpc_fcn.train", "hpc_fcn.ensemble.tune"])
def test_print_config_of_the_other_commands(module, capsys):
    import importlib
    cls, config = SCHEMAS[module]
    main = importlib.import_module(module + (".__main__" if module == "hpc_fcn.train" else "")).main
    with pytest.raises(SystemExit) as exc:
        main(["--print-config", str(ROOT / config)])
    assert exc.value.code == 0
    _check_printed(capsys.readouterr().out, cls, load_config(cls, ROOT / config))
    with pytest.raises(SystemExit):  # no config: the defaults, with overrides
        main(["--print-config", "progress=false"])
    _check_printed(capsys.readouterr().out, cls, from_dict(cls, {}, ["progress=false"]))


def test_print_config_of_a_bad_value_is_the_config_error():
    from hpc_fcn.ensemble.__main__ import main
    with pytest.raises(ConfigError, match="forecast.lead_time"):
        main(["--print-config", "forecast.lead_time=3x"])


@pytest.mark.parametrize("module", list(SCHEMAS))
def test_version_and_help(module, capsys):
    import importlib
    main = importlib.import_module(module + (".__main__" if module != "hpc_fcn.ensemble.tune" else "")).main
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"hpc_fcn {hpc_fcn.__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and f"python -m {module} --print-config" in capsys.readouterr().out


def test_a_bad_flag_prints_the_usage_once_and_every_rank_exits_2():
    proc = subprocess.run(command(2, "config/ens100.yaml", "--no-such-flag"), capture_output=True, text=True,
                          env=CLI_ENV, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("usage: python -m hpc_fcn.ensemble") == 1, proc.stderr
    assert proc.stderr.count("unrecognized arguments: --no-such-flag") == 1, proc.stderr


# ---- checks that need no data come first ------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("forecast.lead_time=3x", "error: config key 'forecast.lead_time': '3x' is not a lead time"),
    ("forecast.lead_time=3h", "error: config key 'forecast.lead_time': 3h is not a multiple of the 6 h model step"),
])
def test_bad_values_fail_before_the_builtin_dataset_is_generated(tmp_path, override, expected):
    cache = tmp_path / "cache" / "builtin"  # an empty cache: a run would generate the dataset here first
    env = dict(CLI_ENV, HPC_FCN_DATA=str(cache))
    proc = subprocess.run(command(1, "config/ens100.yaml", override, f"output.dir={tmp_path / 'out'}"),
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing generated
    assert "generating" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()  # nor the output folder made


@pytest.mark.parametrize("overrides, world, expected", [
    (["initial_conditions.times=[1990-01-01T00]"], 1, "initial_conditions.times[0]': 1990-01-01T00 is not in the"),
    (["initial_conditions.start=2006-01-01T00"], 1, "initial_conditions.start': no initial time of the"),
    (["parallel.ensemble=2"], 1, "parallel': ensemble x h x w x matmul = 2 x 1 x 1 x 1 = 2 but the job has 1"),
    (["parallel.h=2"], 3, "parallel': h x w x matmul = 2 x 1 x 1 = 2 does not divide the 3 MPI ranks"),
    (["ensemble.members=2", "parallel.ensemble=4"], 4, "ensemble.members': 2 members cannot be spread over 4"),
])
def test_checks_before_data(overrides, world, expected, monkeypatch, tmp_path):
    from hpc_fcn.ensemble.resolve import check_before_data
    monkeypatch.setenv("HPC_FCN_DATA", str(tmp_path / "none"))
    cfg = from_dict(EnsembleConfig, {}, overrides)
    with pytest.raises(ConfigError, match=f"config key '{expected}".replace("[", r"\[").replace("]", r"\]")):
        check_before_data(cfg, world)
    check_before_data(from_dict(EnsembleConfig, {}), 1)  # the defaults pass
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("split", ["train", "test", "out_of_sample"])
def test_the_builtin_times_known_before_generation_are_the_datasets(split):
    """The early checks use the built-in dataset's times computed from its generator's options: the same as the
    generated dataset's (the one other tests use, generated on first use)."""
    from hpc_fcn.data.builtin import ensure_builtin
    from hpc_fcn.data.era5 import open_split
    from hpc_fcn.ensemble.resolve import _builtin_times
    cfg = from_dict(EnsembleConfig, {}, [f"initial_conditions.split={split}"])
    times, dt = _builtin_times(cfg)
    ds = open_split(cfg.data, split, root=ensure_builtin())
    assert dt == ds.dt_hours
    np.testing.assert_array_equal(times, ds.times)
