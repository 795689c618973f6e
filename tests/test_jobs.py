"""Job scripts: valid bash (and shellcheck-clean), the performance model's layout on the launch line,
overrides the apps accept; the example scripts up to date; start-up path checks naming the config key."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_fcn import jobs
from hpc_fcn.config import ConfigError, load_config
from hpc_fcn.ensemble.config import EnsembleConfig
from hpc_fcn.paths import check_paths
from hpc_fcn.schema import DataConfig
from hpc_fcn.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
PROD = str(REPO / "config" / "era5_production.yaml")
TRAIN = str(REPO / "config" / "train_era5.yaml")
SHELLCHECK = shutil.which("shellcheck")


def check_bash(path: Path) -> None:
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if SHELLCHECK:  # optional: CI machines may not have it
        out = subprocess.run([SHELLCHECK, "-s", "bash", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def generate(tmp_path, *argv, name="job.sh"):
    out = tmp_path / name
    rc = jobs.main([*map(str, argv), "--out", str(out)])
    return rc, out


def fake_launchers(tmp_path) -> dict:
    """srun/mpirun that record their arguments, so a script can run here without a cluster."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("srun", "mpirun"):
        script = bindir / tool
        script.write_text('#!/bin/bash\nif [ "${1:-}" = "--version" ]; then echo "HYDRA build details"; exit 0; fi\n'
                          f'printf "%s\\n" "$@" > "{tmp_path}/{tool}.args"\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}
    env.update(PATH=f"{bindir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(tmp_path), PBS_O_WORKDIR=str(tmp_path))
    return env


def run_script(path: Path, tmp_path, tool: str) -> list[str]:
    env = fake_launchers(tmp_path)
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return (tmp_path / f"{tool}.args").read_text().splitlines()


def app_args(argv: list[str], module: str) -> tuple[str, list[str]]:
    """CONFIG and the overrides after ``-m module`` on a recorded launch line."""
    i = argv.index(module)
    return argv[i + 1], argv[i + 2:]


# ---- example scripts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", sorted(jobs.EXAMPLES))
def test_examples_are_current_and_valid(rel):
    path = REPO / "jobs" / rel
    assert path.read_text() == jobs.example(rel), f"jobs/{rel} is stale: python -m hpc_fcn.jobs --write-examples jobs"
    check_bash(path)


def test_bind_local_gpu_picks_the_local_ranks_gpu():
    check_bash(REPO / "jobs" / "bind_local_gpu.sh")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="4,5,6,7", OMPI_COMM_WORLD_LOCAL_RANK="2", GPUS_PER_NODE="4")
    out = subprocess.run([str(REPO / "jobs" / "bind_local_gpu.sh"), "bash", "-c", "echo $CUDA_VISIBLE_DEVICES"],
                         capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "6"


def test_example_runs_with_layout_and_extra_overrides(tmp_path):
    env_layout = "parallel.ensemble=2 parallel.h=2 parallel.w=2 parallel.matmul=1"
    path = REPO / "jobs" / "slurm" / "ensemble.sbatch"
    env = fake_launchers(tmp_path)
    env.update(LAYOUT=env_layout, EXTRA="ensemble.members=8 forecast.lead_time=1d", PYTHON="python3",
               CONFIG=PROD, SLURM_NTASKS="8")
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = (tmp_path / "srun.args").read_text().splitlines()
    assert "--ntasks=8" in argv and "--gpus-per-task=1" in argv and "--gpu-bind=closest" in argv
    config, overrides = app_args(argv, "hpc_fcn.ensemble")
    cfg = load_config(EnsembleConfig, config, overrides)
    assert (cfg.parallel.ensemble, cfg.parallel.h, cfg.parallel.w, cfg.ensemble.members) == (2, 2, 2, 8)
    assert cfg.inference.device == "cuda" and cfg.parallel.backend == "torch"


# ---- generated scripts -------------------------------------------------------------------------------
def test_generated_slurm_script_carries_the_perfmodel_layout(tmp_path, capsys):
    import perfmodel
    rc, out = generate(tmp_path, PROD, "--scheduler", "slurm", "--nodes", 2, "--gpus-per-node", 4,
                       "--hardware", "a100", "--account", "proj1", "--partition", "gpu", "ensemble.members=50")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "time to solution" in printed and "memory per GPU" in printed and f"wrote {out}" in printed
    text = out.read_text()
    check_bash(out)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --account=proj1",
                 "#SBATCH --partition=gpu", "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}", "NCCL_DEBUG"):
        assert line in text
    argv = run_script(out, tmp_path, "srun")
    config, overrides = app_args(argv, "hpc_fcn.ensemble")
    cfg = load_config(EnsembleConfig, config, overrides)
    # the layout is what the performance model suggests for these 8 ranks, members_per_pass as chosen
    _, pred = perfmodel.suggest(cfg.model.kwargs(20, 20), ranks=8, hardware="a100", members=50,
                                members_per_pass=cfg.inference.members_per_pass, precision="bf16", lead_steps=40,
                                cuda_graphs=cfg.inference.cuda_graphs)
    assert {k: getattr(cfg.parallel, k) for k in ("ensemble", "h", "w", "matmul")} == pred.layout
    layout_text = " ".join(f"parallel.{k}={v}" for k, v in pred.layout.items())
    assert layout_text in text
    assert f"{jobs._seconds(pred.time_to_solution_s)} time to solution per initial time" in printed
    assert f"memory per GPU: {pred.memory_bytes / 1e9:.1f} GB" in printed
    assert cfg.ensemble.members == 50 and cfg.inference.device == "cuda" and cfg.parallel.backend == "torch"
    assert cfg.parallel.layout == "manual" and cfg.parallel.ensemble * cfg.parallel.h * cfg.parallel.w * \
        cfg.parallel.matmul == 8


def test_generated_pbs_training_script(tmp_path, capsys):
    rc, out = generate(tmp_path, TRAIN, "--scheduler", "pbs", "--nodes", 2, "--gpus-per-node", 4, "--hardware",
                       "h100", "--time", "04:00:00", "--partition", "workq")
    assert rc == 0
    assert "per optimizer step" in capsys.readouterr().out
    text = out.read_text()
    check_bash(out)
    assert "#PBS -l select=2:ncpus=32:ngpus=4:mpiprocs=4" in text and "#PBS -l walltime=04:00:00" in text
    assert "#PBS -q workq" in text and "bind_local_gpu.sh" in text
    argv = run_script(out, tmp_path, "mpirun")
    assert argv[:4] == ["-n", "8", "-ppn", "4"]  # outside a PBS job NRANKS falls back to nodes x GPUs
    config, overrides = app_args(argv, "hpc_fcn.train")
    cfg = load_config(TrainConfig, config, overrides)
    assert cfg.device == "cuda" and cfg.parallel.backend == "torch"
    assert f"parallel.ensemble={cfg.parallel.ensemble} parallel.h={cfg.parallel.h}" in text


def test_mpirun_under_slurm_and_stdout(tmp_path, capsys):
    assert jobs.main([PROD, "--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "8", "--launcher", "mpirun",
                      "--hardware", "h100", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("#!/bin/bash") and "mpirun -n" in captured.out
    assert "time to solution" in captured.err


def test_explicit_layout_needs_no_perfmodel(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "perfmodel", None)  # import perfmodel now raises ImportError
    rc, out = generate(tmp_path, PROD, "--scheduler", "slurm", "--nodes", 1, "--gpus-per-node", 4,
                       "--layout", "1,2,2,1")
    assert rc == 0
    assert "parallel.ensemble=1 parallel.h=2 parallel.w=2 parallel.matmul=1" in out.read_text()
    check_bash(out)


def test_without_perfmodel_there_is_no_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "perfmodel", None)
    rc, out = generate(tmp_path, PROD, "--scheduler", "slurm", "--nodes", 1, "--gpus-per-node", 4)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("error: the performance model (package 'perfmodel') cannot be imported")


@pytest.mark.parametrize("argv, message", [
    (["--scheduler", "pbs", "--nodes", "1", "--gpus-per-node", "4", "--launcher", "srun"], "srun exists only under Slurm"),
    (["--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "4", "--layout", "2,2,2,2"], "multiply to 4 ranks"),
    (["--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "3", "--layout", "1,1,1,3"],
     "3 does not divide num_blocks=8"),  # the grid's own rule (hpc_fcn.parallel.layout)
    (["--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "4", "--layout", "4,1,1,1", "--time", "2h"],
     "is not HH:MM:SS"),
    (["--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "4", "--layout", "4,1,1,1", "ensemble.members=0"],
     "config key 'ensemble.members'"),
    (["--scheduler", "slurm", "--nodes", "1", "--layout", "4,1,1,1"], "missing --gpus-per-node"),
])
def test_clear_errors(tmp_path, capsys, argv, message):
    rc, out = generate(tmp_path, PROD, *argv)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_lead_steps_and_channels_come_from_the_data(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_layout import write_layout
    write_layout(tmp_path / "d", splits={"out_of_sample": (2001,)}, channels=3, rows=9, cols=16, dt_hours=12)
    cfg = load_config(EnsembleConfig, None, [f"data.root={tmp_path / 'd'}", "model.img_size=[8,16]",
                                             "model.patch_size=4", "forecast.lead_time=2d"])
    kwargs, run = jobs.ensemble_case(cfg)
    assert kwargs["in_chans"] == 3 and run["lead_steps"] == 4  # 48 h at the data's 12-hour step
    kwargs, run = jobs.ensemble_case(load_config(EnsembleConfig, PROD))  # data not at hand: the 6-hour default
    assert kwargs["in_chans"] == 20 and run["lead_steps"] == 40 and run["members_per_pass"] == 0


def test_suggested_time_and_app_detection():
    assert jobs.suggested_time(0) == "00:15:00" and jobs.suggested_time(3600) == "01:45:00"
    assert jobs.detect_app(PROD) == "ensemble" and jobs.detect_app(TRAIN) == "train"


# ---- configs and path checks -------------------------------------------------------------------------
def test_production_config_loads_with_the_reference_channels():
    from hpc_fcn.data.era5 import ERA5_CHANNELS
    cfg = load_config(EnsembleConfig, PROD)
    assert cfg.data.channels == list(ERA5_CHANNELS[:20])
    m = cfg.model
    assert (tuple(m.img_size), m.patch_size, m.embed_dim, m.depth, m.num_blocks) == ((720, 1440), 8, 768, 12, 8)
    assert cfg.ensemble.members == 100 and cfg.model.checkpoint.startswith("/path/to/")
    assert load_config(TrainConfig, TRAIN).data.channels == cfg.data.channels


def test_check_paths_names_the_missing_key(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_layout import write_layout
    cfg = load_config(EnsembleConfig, PROD)
    with pytest.raises(ConfigError, match=r"^config key 'model.checkpoint': /path/to/FourCastNet/backbone.ckpt "
                                          r"does not exist \(it is still the template's placeholder"):
        check_paths(cfg)
    ckpt = tmp_path / "backbone.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"^config key 'data.root': /path/to/era5 is not a directory"):
        check_paths(load_config(EnsembleConfig, PROD, [f"model.checkpoint={ckpt}"]))
    write_layout(tmp_path / "era5", splits={"train": (2000,), "test": (2001,)}, channels=3)
    ok = [f"model.checkpoint={ckpt}", f"data.root={tmp_path / 'era5'}"]
    with pytest.raises(ConfigError, match=r"^config key 'initial_conditions.split': .*out_of_sample does not exist"):
        check_paths(load_config(EnsembleConfig, PROD, ok))
    check_paths(load_config(EnsembleConfig, PROD, ok + ["initial_conditions.split=test"]))  # test/ exists
    (tmp_path / "era5" / "stats" / "time_means.npy").unlink()
    with pytest.raises(ConfigError, match=r"^config key 'data.stats_dir': time_means.npy missing in .*stats"):
        check_paths(load_config(EnsembleConfig, PROD, ok + ["initial_conditions.split=test"]))
    # training reads train/ and (validation on) validation.split's folder
    with pytest.raises(ConfigError, match=r"^config key 'data.stats_dir'"):
        check_paths(load_config(TrainConfig, TRAIN, [f"data.root={tmp_path / 'era5'}"]))
    (tmp_path / "era5" / "out_of_sample").mkdir()
    with pytest.raises(ConfigError, match=r"^config key 'validation.split': .*out_of_sample holds no year files"):
        check_paths(load_config(TrainConfig, TRAIN, [f"data.root={tmp_path / 'era5'}",
                                                     "validation.split=out_of_sample"]))


def test_check_paths_skips_builtin_and_null():
    check_paths(load_config(EnsembleConfig, None, ["model.checkpoint=builtin", "data.root=builtin"]))
    check_paths(load_config(EnsembleConfig, None, ["model.checkpoint=null", "data.root=builtin"]))
    assert DataConfig().root == "builtin"


# ---- CPU nodes, every shipped config, preemption ---------------------------------------------------------
SHIPPED = sorted(str(p) for p in (REPO / "config").glob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: Path(p).name)
@pytest.mark.parametrize("gpus", [4, 0])
def test_every_shipped_config_makes_a_script_without_its_data(tmp_path, monkeypatch, capsys, config, gpus):
    """Channels come from the data's metadata, the built-in dataset's known facts or the checkpoint: making a
    script never needs (or generates) the data."""
    monkeypatch.setenv("HPC_FCN_DATA", str(tmp_path / "not_generated"))
    rc, out = generate(tmp_path, config, "--scheduler", "slurm", "--nodes", "2", "--gpus-per-node", gpus,
                       "--cpus-per-node", 8, "--threads-per-rank", 2)
    assert not (tmp_path / "not_generated").exists()
    if gpus == 0 and config.endswith("train_era5.yaml"):  # the production training does not fit two 25 GB nodes
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "no layout of 8 ranks fits" in err[0] and "GB per rank" in err[0]
        return
    assert rc == 0
    check_bash(out)
    text = out.read_text()
    if gpus:
        assert "--gpus-per-node=4" in text and "parallel.backend=torch" in text
    else:  # 8 cores / 2 threads = 4 ranks per node, MPI collectives, no GPU anywhere
        sbatch = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
        assert "#SBATCH --ntasks-per-node=4" in " ".join(sbatch) and "--cpus-per-task=2" in text
        assert not any("gpu" in ln for ln in sbatch) and "cuda" not in text and '/bind_local_gpu.sh" ' not in text
        assert "parallel.backend=mpi" in text and "parallel.threads=2" in text and "device=cpu" in text


def test_cpu_script_runs_the_cpu_layout_under_both_launchers(tmp_path):
    for launcher in ("srun", "mpirun"):
        (tmp_path / launcher).mkdir()
        rc, out = generate(tmp_path / launcher, PROD, "--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "0",
                           "--cpus-per-node", "4", "--launcher", launcher)
        assert rc == 0
        args = run_script(out, tmp_path / launcher, launcher)
        assert "inference.device=cpu" in args and "parallel.threads=1" in args and "resume=true" in args
        assert not any("bind_local_gpu" in a or "gpu" in a for a in args), args


def test_slurm_scripts_stop_before_the_limit_and_requeue_until_complete(tmp_path):
    """SIGTERM to the script (--signal=B:TERM before the limit, or a preemption) reaches the run, which stops
    with its snapshot; the job requeues itself; a run that ends by itself is not requeued."""
    rc, out = generate(tmp_path, PROD, "--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "0",
                       "--cpus-per-node", "2", "--stop-before", "240")
    assert rc == 0
    text = out.read_text()
    assert "#SBATCH --signal=B:TERM@240" in text and "#SBATCH --requeue" in text and "resume=true" in text
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # srun's step: TERM (which Slurm delivers to the step's tasks on scancel -s TERM JOB.STEP) stops it
    (bindir / "srun").write_text('#!/bin/bash\ntrap \'echo stopped >> "$LOG"; kill %1; exit 143\' TERM\n'
                                 'echo $$ > "$LOG.pid"\necho started >> "$LOG"\n'
                                 'if [ -n "${FINISH:-}" ]; then exit 0; fi\nsleep 30 >/dev/null 2>&1 & wait\n')
    (bindir / "squeue").write_text('#!/bin/bash\nprintf "77.batch\\n77.0\\n"\n')
    (bindir / "scancel").write_text('#!/bin/bash\necho "scancel $*" >> "$LOG"\nkill -TERM "$(cat "$LOG.pid")"\n')
    (bindir / "scontrol").write_text('#!/bin/bash\necho "scontrol $*" >> "$LOG"\n')
    for tool in ("srun", "squeue", "scancel", "scontrol"):
        (bindir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bindir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_ID="77",
               LOG=str(tmp_path / "log"))
    proc = subprocess.Popen(["bash", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    for _ in range(200):
        if (tmp_path / "log").exists():
            break
        time.sleep(0.05)
    proc.send_signal(15)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, stdout
    assert (tmp_path / "log").read_text().split("\n")[:4] == ["started", "scancel -s TERM 77.0", "stopped",
                                                             "scontrol requeue 77"]
    (tmp_path / "log").unlink()
    done = subprocess.run(["bash", str(out)], env=dict(env, FINISH="1"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and (tmp_path / "log").read_text() == "started\n"  # complete: not requeued


def test_hardware_of_the_wrong_kind_is_one_line(tmp_path, capsys):
    rc, _ = generate(tmp_path, PROD, "--scheduler", "slurm", "--nodes", "1", "--gpus-per-node", "0",
                     "--cpus-per-node", "4", "--hardware", "h100")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "describes a gpu node but the job runs on CPU nodes" in err[0]
