#!/usr/bin/env python3
"""Which MPI the virtualenv uses, decided by trying rather than by looking (stdlib only).

tools/bootstrap.sh and tools/mpirun.sh call it:
  decide --mode auto|system|pypi   before installing mpi4py: does the machine's MPI compile, link and
                                   run a 2-rank test program? Prints shell assignments
                                   (MPI_CHOICE=system|pypi, MPI_MPICC, MPI_REASON).
  probe  --python PY [--write F]   after installing: which MPI PY's mpi4py loads, the mpirun of that
                                   implementation, and a 2-rank mpi4py hello under it. Prints (and
                                   writes) the record tools/mpirun.sh reads.
  locate --python PY               the same record without the hello (tools/mpirun.sh, no record).
A machine's mpirun of another implementation is never used: every candidate launcher is identified by
its --version output and must be of mpi4py's implementation ("family": openmpi or mpich).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MPIRUN_SH = HERE / "mpirun.sh"
MODES = ("auto", "system", "pypi")
PYPI = "MPICH from PyPI"
NAMES = {"openmpi": "Open MPI", "mpich": "MPICH"}
# The development package that provides mpi.h, per family (Debian/Ubuntu names; RHEL: *-devel).
DEV_PACKAGE = {"openmpi": "libopenmpi-dev", "mpich": "libmpich-dev"}
# Launchers that only ever belong to one family, tried after the one beside the library / mpicc.
OWN_LAUNCHERS = {
    "openmpi": ("mpirun.openmpi", "mpiexec.openmpi", "orterun", "prterun"),
    "mpich": ("mpirun.mpich", "mpiexec.mpich", "mpiexec.hydra"),
}
TEST_PROGRAM = """#include <mpi.h>
int main(int argc, char **argv) { int n = 0; MPI_Init(&argc, &argv); MPI_Comm_size(MPI_COMM_WORLD, &n); MPI_Finalize(); return n == 2 ? 0 : 3; }
"""
FAMILY_PROBE = """#include <mpi.h>
#if defined(OPEN_MPI)
hpc_fcn_family=openmpi hpc_fcn_version=OMPI_MAJOR_VERSION.OMPI_MINOR_VERSION.OMPI_RELEASE_VERSION
#elif defined(MPICH_VERSION)
hpc_fcn_family=mpich hpc_fcn_version=MPICH_VERSION
#else
hpc_fcn_family=unknown hpc_fcn_version=0
#endif
"""
HELLO = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
         "print(f'hello {c.Get_rank()}/{c.Get_size()} sum={c.allreduce(c.Get_rank() + 1)}', flush=True)")
INFO = r"""
import json, os, re, sys
import mpi4py
mpi4py.rc.initialize = False
mpi4py.rc.finalize = False
from mpi4py import MPI
lib = ""
with open("/proc/self/maps") as maps:
    for line in maps:
        path = line.split(None, 5)[-1].strip() if len(line.split()) > 5 else ""
        if re.match(r"lib(mpi|mpich|mpi_cray|mpi_abi)\.so", os.path.basename(path)):
            lib = path
            break
print(json.dumps({"version": MPI.Get_library_version(), "libmpi": lib, "mpi4py": mpi4py.__file__,
                  "config": {k: str(v) for k, v in mpi4py.get_config().items()}, "prefix": sys.prefix}))
"""


class Unusable(Exception):
    """The MPI under test cannot be used: why (one line), and how to make it usable (may be empty)."""

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def run(cmd, timeout=60, env=None, cwd=None):
    """(exit status, stdout + stderr) of a command; a missing or hung command is a failure, not an exception."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=env, cwd=cwd)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout} s"
    except OSError as e:
        return 127, str(e)


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["(no output)"])[0][:200]


def family_of_launcher(mpirun: str) -> str:
    """'openmpi', 'mpich' (Hydra: MPICH, Intel MPI, MVAPICH) or 'unknown', from `mpirun --version`."""
    _, out = run([mpirun, "--version"], timeout=20)
    low = out.lower()
    if "open mpi" in low or "openrte" in low or "pmix reference runtime" in low:
        return "openmpi"
    if "hydra" in low or "mpich" in low or "intel(r) mpi" in low:
        return "mpich"
    return "unknown"


def family_of_library(version: str) -> str:
    """The launcher family of an MPI library, from MPI_Get_library_version."""
    low = version.lower()
    if "open mpi" in low:
        return "openmpi"
    if "mpich" in low or "intel(r) mpi" in low or "mvapich" in low:
        return "mpich"
    return "unknown"


def short_version(version: str) -> str:
    """'Open MPI 4.1.4' / 'MPICH 5.0.2' / first line, from MPI_Get_library_version."""
    m = re.search(r"Open MPI v?([\d.]+)", version) or re.search(r"MPICH Version:\s*([\d.]+\w*)", version)
    if m:
        return ("Open MPI " if "Open MPI" in m.group(0) else "MPICH ") + m.group(1)
    return version.strip().splitlines()[0].strip() if version.strip() else "unknown MPI"


def path_dirs():
    return [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]


def launcher_candidates(family: str, near=()):
    """Launchers to try, best first: beside the library or mpicc, then the family's own names, then PATH."""
    seen, out = set(), []

    def add(path):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append(path)

    for d in near:
        for name in ("mpirun", "mpiexec"):
            add(os.path.join(d, name))
    for name in OWN_LAUNCHERS.get(family, ()):
        add(shutil.which(name))
    for name in ("mpirun", "mpiexec"):
        for d in path_dirs():
            add(os.path.join(d, name))
    return out


def find_launcher(family: str, near=()):
    """(the first launcher of this family, the families of those rejected); None when there is none."""
    rejected = []
    for mpirun in launcher_candidates(family, near):
        fam = family_of_launcher(mpirun)
        if fam == family:
            return mpirun, rejected
        rejected.append(f"{mpirun} is {NAMES.get(fam, 'another MPI')}")
    return None, rejected


def launch(mpirun: str, family: str, argv, timeout=120):
    """Run argv on 2 ranks with this launcher through tools/mpirun.sh (which owns the launcher flags)."""
    env = dict(os.environ, HPC_FCN_MPIRUN=mpirun, HPC_FCN_MPI_FAMILY=family, OMP_NUM_THREADS="1")
    return run([str(MPIRUN_SH), "-n", "2", *argv], timeout=timeout, env=env)


def hint(family: str) -> str:
    if family in DEV_PACKAGE:
        return f"install {DEV_PACKAGE[family]} to use {NAMES[family]}"
    return "install your MPI's development package (mpi.h) to use it"


def mpicc_family_guess(mpicc: str) -> str:
    """The family of a wrapper that cannot compile, for the hint only (Open MPI: --showme; MPICH: -show)."""
    _, out = run([mpicc, "--showme:version"], timeout=20)
    if "open mpi" in out.lower():
        return "openmpi"
    _, out = run([mpicc, "-show"], timeout=20)
    if "mpich" in out.lower():
        return "mpich"
    mpirun = shutil.which("mpirun")
    return family_of_launcher(mpirun) if mpirun else "unknown"


def try_system(mpicc: str):
    """(label, mpirun) of the machine's MPI if mpicc compiles, links and runs a 2-rank program; else Unusable."""
    with tempfile.TemporaryDirectory(prefix="hpc_fcn-mpi-") as tmp:
        src = Path(tmp, "t.c")
        src.write_text(TEST_PROGRAM)
        rc, out = run([mpicc, str(src), "-o", str(Path(tmp, "t"))], cwd=tmp)
        if rc != 0:
            fam = mpicc_family_guess(mpicc)
            if "mpi.h" in out:
                raise Unusable("mpicc found but mpi.h missing", hint(fam))
            if re.search(r"cannot find -l|undefined reference", out):
                raise Unusable(f"mpicc found but cannot link an MPI program ({first_line(out)})", hint(fam))
            raise Unusable(f"mpicc found but cannot build an MPI program ({first_line(out)})")
        Path(tmp, "f.c").write_text(FAMILY_PROBE)
        _, out = run([mpicc, "-E", str(Path(tmp, "f.c"))], cwd=tmp)
        m = re.search(r"hpc_fcn_family=(\w+) hpc_fcn_version=(.*)", out)
        family = m.group(1) if m else "unknown"
        version = re.sub(r'[\s"]', "", m.group(2)) if m else ""
        label = f"{NAMES.get(family, 'MPI')} {version}".strip()
        if family == "unknown":
            raise Unusable("mpicc builds MPI programs but its MPI is neither Open MPI nor MPICH-based",
                           "build mpi4py against it by hand (docs/cluster.md)")
        mpirun, rejected = find_launcher(family, near=[os.path.dirname(mpicc)])
        if mpirun is None:
            others = f" ({'; '.join(rejected)})" if rejected else ""
            raise Unusable(f"mpicc is {label} but there is no {NAMES[family]} mpirun{others}",
                           f"put the {NAMES[family]} mpirun on PATH")
        rc, out = launch(mpirun, family, [str(Path(tmp, "t"))])
        if rc != 0:
            why = "runs 2 separate 1-rank jobs" if rc == 3 else first_line(out)
            raise Unusable(f"{label} ({mpicc}) builds a test program but `{mpirun} -n 2` fails: {why}")
        return label, mpirun


def decide(mode: str):
    """(choice 'system'|'pypi', mpicc or '', one-line reason); Unusable when mode is 'system' and it is not."""
    if mode == "pypi":
        return "pypi", "", f"MPI=pypi: using {PYPI}"
    mpicc = shutil.which("mpicc")
    try:
        if mpicc is None:
            mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
            if mpirun is None:
                raise Unusable("no MPI on this machine (no mpicc, no mpirun)")
            fam = family_of_launcher(mpirun)
            raise Unusable(f"{mpirun} ({NAMES.get(fam, 'unknown MPI')}) found but no mpicc", hint(fam))
        label, mpirun = try_system(mpicc)
    except Unusable as e:
        if mode == "system":
            raise
        return "pypi", "", f"{e.reason}: using {PYPI}" + (f"; {e.fix}" if e.fix else "")
    return "system", mpicc, f"{label} ({mpicc}) builds and runs a 2-rank test program under {mpirun}: using it"


def mpi4py_info(python: str) -> dict:
    rc, out = run([python, "-c", INFO], timeout=60)
    if rc != 0:
        raise Unusable(f"mpi4py.MPI does not import in {python}: {first_line(out)}")
    return json.loads(out.strip().splitlines()[-1])


def record_for(python: str, hello: bool) -> dict:
    """What tools/mpirun.sh needs to launch PY's mpi4py: its MPI, where it comes from, the matching mpirun."""
    info = mpi4py_info(python)
    family = family_of_library(info["version"])
    label = short_version(info["version"])
    lib = info["libmpi"]
    prefix = os.path.realpath(info["prefix"])
    pypi = bool(lib) and os.path.realpath(lib).startswith(prefix + os.sep)
    near = []
    if lib:  # <prefix>/lib[/<arch>]/libmpi.so -> <prefix>/bin
        d = os.path.dirname(lib)
        for _ in range(3):
            d = os.path.dirname(d)
            near.append(os.path.join(d, "bin"))
    if info["config"].get("mpicc"):
        near.append(os.path.dirname(shutil.which(info["config"]["mpicc"]) or info["config"]["mpicc"]))
    if family == "unknown":
        raise Unusable(f"mpi4py in {python} uses {label}, neither Open MPI nor MPICH-based",
                       "set HPC_FCN_MPIRUN to its launcher")
    mpirun, rejected = find_launcher(family, near)
    if mpirun is None:
        others = f" ({'; '.join(rejected)})" if rejected else ""
        raise Unusable(f"mpi4py in {python} uses {label} but there is no {NAMES[family]} mpirun{others}",
                       f"put the {NAMES[family]} mpirun on PATH or set HPC_FCN_MPIRUN")
    if hello:
        rc, out = launch(mpirun, family, [python, "-c", HELLO])
        if rc != 0 or "hello 0/2 sum=3" not in out or "hello 1/2 sum=3" not in out:
            why = "runs 2 separate 1-rank jobs" if "hello 0/1" in out else first_line(out)
            raise Unusable(f"mpi4py ({label}) fails a 2-rank hello under {mpirun}: {why}")
    return {"MPI_SOURCE": "pypi" if pypi else "system", "MPI_FAMILY": family,
            "MPI_LABEL": f"{label} {'from PyPI' if pypi else 'of the machine'}", "MPI_MPIRUN": mpirun,
            "MPI_LIBMPI": lib, "MPI_MPI4PY": info["mpi4py"]}


def shell(assignments: dict) -> str:
    return "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in assignments.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decide")
    d.add_argument("--mode", default=os.environ.get("MPI") or "auto")
    d.add_argument("--venv", help="ignore the MPI inside this virtualenv (it is what MPI=pypi installs)")
    for name in ("probe", "locate"):
        p = sub.add_parser(name)
        p.add_argument("--python", required=True)
        p.add_argument("--write", help="also write the record to this file")
        p.add_argument("--require", choices=MODES, default="auto", help="fail unless the MPI comes from here")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "decide":
            if a.mode not in MODES:
                print(f"error: MPI={a.mode} is not a choice: use MPI=system, MPI=pypi or leave MPI unset",
                      file=sys.stderr)
                return 2
            if a.venv:
                own = os.path.realpath(a.venv) + os.sep
                os.environ["PATH"] = os.pathsep.join(
                    d for d in path_dirs() if not (os.path.realpath(d) + os.sep).startswith(own))
            try:
                choice, mpicc, reason = decide(a.mode)
            except Unusable as e:
                fix = f"{e.fix}, or use MPI=pypi" if e.fix else "use MPI=pypi"
                print(f"error: MPI=system but {e.reason}: {fix}", file=sys.stderr)
                return 1
            sys.stdout.write(shell({"MPI_CHOICE": choice, "MPI_MPICC": mpicc, "MPI_REASON": reason}))
            return 0
        rec = record_for(a.python, hello=a.cmd == "probe")
        if a.require != "auto" and rec["MPI_SOURCE"] != a.require:
            raise Unusable(f"mpi4py uses {rec['MPI_LABEL']}, not MPI={a.require}")
        text = shell(rec)
        if a.write:
            Path(a.write).write_text(text)
        sys.stdout.write(text)
        return 0
    except Unusable as e:
        print(f"error: {e.reason}" + (f": {e.fix}" if e.fix else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
