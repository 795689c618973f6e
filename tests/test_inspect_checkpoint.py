"""tools/inspect_checkpoint.py: layouts recognised, entries and sizes reported, configuration inferred."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpc_fcn.model import AFNONet, PrecipNet, count_parameters, save_checkpoint
from tool_module import load_tool

TOOL = Path(__file__).resolve().parents[1] / "tools" / "inspect_checkpoint.py"
SMALL = dict(img_size=(16, 32), patch_size=4, in_chans=3, out_chans=3, embed_dim=16, depth=2, num_blocks=4)


@pytest.fixture(scope="module")
def tool():
    return load_tool("inspect_checkpoint")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AFNONet(**SMALL)


def run_json(tool, path, capsys, *extra) -> dict:
    assert tool.main([str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_hand_built_published_layout(tool, model, tmp_path, capsys):
    """As the released files are written: DDP model_state with 'module.' keys, optimizer state, iters, epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    model(torch.zeros(1, 3, 16, 32)).sum().backward()
    opt.step()
    ckpt = {"iters": 1234, "epoch": 7, "model_state": {"module." + k: v for k, v in model.state_dict().items()},
            "optimizer_state_dict": opt.state_dict()}
    torch.save(ckpt, tmp_path / "backbone.ckpt")
    info = run_json(tool, tmp_path / "backbone.ckpt", capsys)
    assert info["layout"] == "published" and info["module_prefix"] and info["model"] == "AFNONet"
    assert (info["iters"], info["epoch"]) == (1234, 7)
    assert info["optimizer_state"]["param_groups"] == 1 and info["optimizer_state"]["lr"] == [5e-4]
    assert info["optimizer_state"]["params_with_state"] == sum(p.grad is not None for p in model.parameters())
    assert set(info["entries"]) == {"iters", "epoch", "model_state", "optimizer_state_dict"}
    assert info["parameters"] == sum(v.numel() for v in model.state_dict().values())
    assert info["parameters"] == count_parameters(model)
    assert info["bytes"] == 4 * info["parameters"] and info["dtypes"] == ["float32"]
    cfg = info["config"]
    assert cfg["img_size"] == [16, 32] and cfg["patch_size"] == [4, 4] and cfg["in_chans"] == cfg["out_chans"] == 3
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_blocks"], cfg["mlp_ratio"]) == (16, 2, 4, 4.0)
    assert cfg["precip"] is False and info["production"] is False
    names = {k["name"]: k for k in info["keys"]}
    assert names["blocks.1.filter.w1"]["shape"] == [2, 4, 4, 4] and "module.pos_embed" not in names
    assert names["head.weight"]["shape"] == [3 * 16, 16]


def test_text_report_names_everything(tool, model, tmp_path, capsys):
    save_checkpoint(tmp_path / "ours.ckpt", model, epoch=3, iters=42)
    assert tool.main([str(tmp_path / "ours.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "layout      : hpc_fcn  (keys prefixed 'module.')" in out
    assert "iters/epoch : 42 / 3" in out and "optimizer   : absent" in out
    assert f"parameters  : {count_parameters(model):,}" in out
    assert "embed_dim                    16" in out and "img_size                     [16, 32]" in out
    assert "blocks.0.mlp.fc1.weight" in out and "[64, 16]" in out


def test_save_checkpoint_of_a_bare_state_dict_is_the_published_layout(tool, model, tmp_path, capsys):
    save_checkpoint(tmp_path / "p.ckpt", model.state_dict(), epoch=1, iters=2)
    info = run_json(tool, tmp_path / "p.ckpt", capsys, "--no-keys")
    assert info["layout"] == "published" and "keys" not in info and info["config"]["depth"] == 2


def test_plain_state_dict_and_precip(tool, model, tmp_path, capsys):
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    info = run_json(tool, tmp_path / "plain.pt", capsys)
    assert info["layout"] == "state_dict" and not info["module_prefix"] and info["iters"] is None
    assert info["config"]["embed_dim"] == 16
    precip = PrecipNet(**{**SMALL, "out_chans": 1})
    torch.save({"model_state": {"module." + k: v for k, v in precip.state_dict().items()}, "iters": 0, "epoch": 0},
               tmp_path / "precip.ckpt")
    info = run_json(tool, tmp_path / "precip.ckpt", capsys)
    assert info["model"].startswith("PrecipNet") and info["config"]["precip"] is True
    assert info["config"]["out_chans"] == 1 and any(k["name"].startswith("conv.") for k in info["keys"])


def test_production_shapes_are_recognised(tool):
    """Shapes only (meta tensors): the released backbone's 150 keys and 74,691,840 parameters."""
    with torch.device("meta"):
        net = AFNONet(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=12)
    ckpt = {"iters": 0, "epoch": 0, "model_state": {"module." + k: v for k, v in net.state_dict().items()},
            "optimizer_state_dict": {}}
    info = tool.describe(ckpt)
    assert info["num_tensors"] == 150 and info["parameters"] == 74_691_840 and info["production"] is True
    assert info["config"]["img_size"] == [720, 1440] and info["optimizer_state"] is None
    assert "released FourCastNet production configuration" in tool.render(info)


def test_errors_are_one_line(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save({"iters": 1, "note": "no weights"}, tmp_path / "empty.ckpt")
    assert tool.main([str(tmp_path / "empty.ckpt")]) == 2
    assert "holds no tensors" in capsys.readouterr().err
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert tool.main([str(tmp_path / "junk.ckpt")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_command_line(model, tmp_path):
    save_checkpoint(tmp_path / "c.ckpt", model)
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "c.ckpt"), "--json", "--no-keys"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["num_blocks"] == 4
