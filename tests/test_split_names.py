"""One split vocabulary: a split is named by its folder under the data root (train, test, out_of_sample), in the
converter, the configs and the built-in dataset; the names of earlier releases get a one-line error saying the new."""
from __future__ import annotations

import pytest

from hpc_fcn.config import ConfigError, from_dict
from hpc_fcn.data.era5 import SPLITS
from hpc_fcn.data.synth import _split_dir, builtin_options
from hpc_fcn.ensemble.config import EnsembleConfig
from hpc_fcn.ensemble.tune import TuneConfig
from hpc_fcn.train.config import TrainConfig


def test_every_split_is_a_folder_of_the_layout():
    assert SPLITS == ("train", "test", "out_of_sample")  # FourCastNet's published folders
    opts = builtin_options()
    assert {_split_dir(opts, y) for y in opts.years} == set(SPLITS)
    assert [_split_dir(opts, y) for y in (opts.train_years[0], opts.test_years[0], opts.out_of_sample_years[0])] \
        == list(SPLITS)
    assert EnsembleConfig().initial_conditions.split == "out_of_sample"
    assert TrainConfig().validation.split == "test" and TuneConfig().split == "test"
    assert all(EnsembleConfig().data.split_dir(s) == s for s in SPLITS)


@pytest.mark.parametrize("cls, override, key", [
    (EnsembleConfig, "initial_conditions.split=valid", "initial_conditions.split"),
    (TrainConfig, "validation.split=valid", "validation.split"),
])
def test_the_old_split_name_says_the_new_one(cls, override, key):
    with pytest.raises(ConfigError) as err:
        from_dict(cls, {}, [override])
    assert str(err.value).startswith(f"config key '{key}': split 'valid' is now called 'test'")
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("old, says", [
    ("valid_dir", "the validation years are split 'test', read from test/"),
    ("test_dir", "split 'test' now reads test/; the held-out years are split 'out_of_sample'"),
    ("train_dir", "a split is read from the folder of its name under data.root"),
])
def test_the_old_folder_keys_say_what_replaced_them(old, says):
    with pytest.raises(ConfigError, match=f"^config key 'data.{old}': removed: .*delete this key") as err:
        from_dict(EnsembleConfig, {"data": {old: "test"}})
    assert says in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_converter_takes_the_split_names_only(tmp_path, capsys):
    from hpc_fcn.data.convert import main
    assert main(["--output", str(tmp_path / "out"), "--stats-from", "valid"]) == 2
    err = capsys.readouterr().err
    assert "split 'valid' is now called 'test'" in err and not (tmp_path / "out").exists()
