"""Strict configs: typed sections, dotted overrides, errors that name the key, resolved config saved."""
import pytest

from hpc_fcn.config import ConfigError, load_config, save_resolved
from hpc_fcn.ensemble.config import EnsembleConfig, parse_lead


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {patch_size: 4, img_size: [64, 128]}\nparallel: {h: 2}\nensemble: {members: 10}\n")
    cfg = load_config(EnsembleConfig, path, ["parallel.matmul=2", "ensemble.members=12", "output.variables=[u, z]",
                                             "perturbation.channel_amplitude.z=0.1"])
    assert cfg.model.img_size == (64, 128) and cfg.parallel.h == 2 and cfg.parallel.matmul == 2
    assert cfg.ensemble.members == 12 and cfg.output.variables == ["u", "z"]
    assert cfg.perturbation.channel_amplitude == {"z": 0.1}
    out = save_resolved(cfg, tmp_path / "run")
    again = load_config(EnsembleConfig, out)
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    (["parallel.hh=2"], "config key 'parallel.hh': unknown key (did you mean 'h'?)"),
    (["bogus=1"], "config key 'bogus': unknown key"),
    (["parallel.h=two"], "config key 'parallel.h': expected an integer, got 'two'"),
    (["parallel.h=0"], "config key 'parallel.h': must be >= 1"),
    (["model.embed_dim=30"], "config key 'model.num_blocks': must divide embed_dim=30"),
    (["model.img_size=[63, 128]", "model.patch_size=4"], "config key 'model.img_size'"),
    (["perturbation.method=foo"], "config key 'perturbation.method': must be one of"),
    (["resume=maybe"], "config key 'resume': expected true or false"),
    (["parallel=3"], "config key 'parallel': expected a mapping"),
    (["parallel.h.x=3"], "config key 'parallel.h': expected an integer"),
    (["noequals"], "not of the form key=value"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(EnsembleConfig, None, override)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(EnsembleConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(EnsembleConfig, bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(EnsembleConfig, bad)


def test_lead_times():
    assert parse_lead("10d", 6, "k") == 40
    assert parse_lead("240h", 6, "k") == 40
    assert parse_lead(7, 6, "k") == 7
    for bad in ("3x", "5h", "0d"):
        with pytest.raises(ConfigError, match="config key 'k'"):
            parse_lead(bad, 6, "k")


def test_shipped_configs_validate():
    import pathlib
    paths = sorted(pathlib.Path(__file__).parents[1].glob("config/ens*.yaml"))
    assert paths
    for path in paths:
        load_config(EnsembleConfig, path)


def test_include_merges_under_own_keys_then_overrides(tmp_path):
    (tmp_path / "frag").mkdir()
    (tmp_path / "frag" / "base.yaml").write_text("ensemble: {members: 7, seed: 5}\n")
    (tmp_path / "frag" / "pert.yaml").write_text(
        "include: [base.yaml]\nperturbation: {method: spherical, amplitude: 0.2, length_scale_km: 800,\n"
        "  channel_amplitude: {u: 0.1, z: 0.4}}\n")
    main = tmp_path / "main.yaml"
    main.write_text("include: [frag/pert.yaml]\nensemble: {members: 9}\nperturbation: {channel_amplitude: {z: 0.5}}\n")
    cfg = load_config(EnsembleConfig, main, ["perturbation.amplitude=0.25"])
    assert cfg.ensemble.members == 9 and cfg.ensemble.seed == 5  # own keys win; nested include read
    assert cfg.perturbation.method == "spherical" and cfg.perturbation.length_scale_km == 800
    assert cfg.perturbation.channel_amplitude == {"u": 0.1, "z": 0.5}  # sections merge key by key
    assert cfg.perturbation.amplitude == 0.25  # overrides last
    text = save_resolved(cfg, tmp_path / "run").read_text()  # the resolved config holds the included values
    assert "include" not in text and "length_scale_km: 800.0" in text and "u: 0.1" in text
    assert load_config(EnsembleConfig, tmp_path / "run" / "config.resolved.yaml") == cfg


@pytest.mark.parametrize("text, message", [
    ("include: [nothere.yaml]\n", "config key 'include[0]' in {main}: {tmp}/nothere.yaml does not exist"),
    ("include: nothere.yaml\n", "config key 'include' in {main}: {tmp}/nothere.yaml does not exist"),
    ("include: [main.yaml]\n", "config key 'include[0]' in {main}: main.yaml includes itself"),
    ("include: {a: 1}\n", "config key 'include' in {main}: expected a list of file paths"),
    ("include: [frag.yaml]\n", "config key 'perturbation.amplitde': unknown key (did you mean 'amplitude'?)"),
])
def test_include_errors_are_one_line_naming_the_key(tmp_path, text, message):
    (tmp_path / "frag.yaml").write_text("perturbation: {amplitde: 0.2}\n")
    main = tmp_path / "main.yaml"
    main.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(EnsembleConfig, main)
    assert message.format(main=main, tmp=tmp_path.resolve()) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_include_cycle_through_another_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"a.yaml includes itself \(cycle: a.yaml -> b.yaml -> a.yaml\)"):
        load_config(EnsembleConfig, tmp_path / "a.yaml")
