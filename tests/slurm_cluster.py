"""A throw-away one-node Slurm cluster for tests (Debian's slurmctld, slurmd and munge packages).

    reason = available()          # None when a cluster can be started here, else why not (one line)
    with SlurmCluster(tmp_dir) as cluster:
        job = cluster.submit(script_text, "--requeue", env={"X": "1"})
        info = cluster.wait(job, timeout=120)          # the final `scontrol show job` fields
        assert info["JobState"] == "COMPLETED"

Everything lives in one folder: slurm.conf, the daemons' state, spool and logs, and a private munged (own key,
own socket), so the machine's own Slurm or munge, if any, is neither used nor disturbed. The daemons run in
the foreground (-D / -F) as children of the test process and are stopped at exit. Every command sees
SLURM_CONF=<folder>/slurm.conf (self.env); a job's environment inherits it from sbatch, so `srun` inside a
batch script talks to this cluster too.

Needs root (SlurmUser=root, jobs run as root). Task plugin task/none and proctrack/linuxproc: no cgroups, so
it runs in containers. MpiDefault=pmi2, the protocol MPICH from PyPI speaks under `srun`.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
HOW_TO = ("tools/slurm_ci.sh installs it as root on Debian (apt-get install slurmd slurmctld slurm-client "
          "munge); then run pytest tests/test_slurm.py")
# States after which a job does not run again by itself (a REQUEUED job goes back to PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class SlurmError(RuntimeError):
    pass


def _which(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for d in SBIN:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def available() -> str | None:
    """Why a cluster cannot be started here (one short phrase), or None when it can."""
    missing = [n for n in DAEMONS + CLIENTS + ("mungekey",) if _which(n) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if os.geteuid() != 0:
        return "not root (the test cluster runs its daemons and jobs as root)"
    return None


def skip_message() -> str | None:
    """The one-line reason a Slurm test skips here (None when it can run)."""
    why = available()
    return None if why is None else f"no Slurm test cluster here ({why}): {HOW_TO}"


def _die_with_parent() -> None:
    """In the daemon's child process: SIGTERM it when the test process dies (Linux prctl PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(lines[-n:])


def parse_fields(text: str) -> dict[str, str]:
    """`scontrol show ...` output (Key=Value pairs separated by blanks or newlines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        # Command=, WorkDir=, StdOut= ... hold one value that may contain blanks: each is on its own line.
        if line.split("=", 1)[0] in ("Command", "WorkDir", "StdOut", "StdErr", "StdIn", "Comment"):
            key, _, value = line.partition("=")
            out[key] = value
            continue
        for item in line.split():
            if "=" in item:
                key, _, value = item.partition("=")
                out.setdefault(key, value)
    return out


class SlurmCluster:
    """A one-node Slurm cluster in `root` (a folder; created if missing). Use as a context manager.

    cpus: the node's CPUs in slurm.conf (default: os.cpu_count()); more than the machine has is allowed
    (SlurmdParameters=config_overrides), so jobs may oversubscribe a small machine.
    cred_expire: seconds a job credential lives; also how long a requeued job waits before it runs again
    (Slurm sets its BeginTime to now + cred_expire + 1; the default 120 s is too slow for tests).
    conf: slurm.conf settings that replace (or add to) the ones written here, e.g. {"KillWait": "30"}.
    """

    def __init__(self, root: str | os.PathLike, cpus: int | None = None, cred_expire: int = 10,
                 start_timeout: float = 60.0, conf: dict[str, str] | None = None):
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.cred_expire = cred_expire
        self.start_timeout = start_timeout
        self.extra_conf = dict(conf or {})
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for var in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if var != "SLURM_CONF":   # a test started inside a Slurm job must not leak that job's settings
                del self.env[var]
        self._procs: dict[str, subprocess.Popen] = {}
        self.leftovers: list[int] = []   # pids stop() had to kill
        self._socket_dir: Path | None = None
        self._logs: dict[str, Path] = {}
        self.started_s: float | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "munge", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        self._start_munge()
        self._write_conf()
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_idle()
        self.started_s = time.monotonic() - t0

    def _start_munge(self) -> None:
        m = self.root / "munge"
        key = m / "munge.key"
        if not key.exists():
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True,
                           capture_output=True)
        self.munge_socket = m / "munge.socket"
        if len(str(self.munge_socket)) > 100:   # a Unix socket's path has at most 107 bytes
            self._socket_dir = Path(tempfile.mkdtemp(prefix="slurm-munge-"))
            self.munge_socket = self._socket_dir / "munge.socket"
        # -f: munged refuses a socket below a folder that is not world-searchable (pytest's tmp folders are
        # 0700); the socket is ours alone, so force it.
        self._spawn("munged", [_which("munged"), "-F", "-f", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--log-file={m / 'munged.log'}",
                               f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}"],
                    log=m / "munged.log")
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmError(f"munged did not create {self.munge_socket}:\n{self._log_tails()}")
            time.sleep(0.1)

    def _write_conf(self) -> None:
        r = self.root
        ctld_port, slurmd_port = _free_port(), _free_port()
        auth = f"socket={self.munge_socket},cred_expire={self.cred_expire}"
        lines = [
            "# Written by tests/slurm_cluster.py: a one-node test cluster; everything below this folder.",
            "ClusterName=hpcfcntest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo={auth}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "SwitchType=switch/none",
            "MpiDefault=pmi2",
            # Job ids no earlier test cluster used: MPICH names its shared-memory segment after the PMI
            # kvsname, which under srun is "<job id>.<step id>", and a step killed inside MPI_Init leaves the
            # segment in /dev/shm; a later cluster counting from 1 again would reuse that name and fail
            # MPI_Init (UCX "failed to unpack address", "Message truncated") or hang, for that job id only.
            f"FirstJobId={random.SystemRandom().randrange(1000, 60_000_000)}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "JobRequeue=1",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "SlurmctldTimeout=10",
            "SlurmdTimeout=30",
            "MessageTimeout=10",
            "KillWait=5",
            "MinJobAge=600",
            "InactiveLimit=0",
            "Waittime=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
            # Empty: the machine's /etc/slurm/plugstack.conf (SPANK plugins) stays out of this cluster.
            f"PlugStackConfig={r / 'plugstack.conf'}",
        ]
        extra = dict(self.extra_conf)
        lines = [f"{line.split('=', 1)[0]}={extra.pop(line.split('=', 1)[0])}"
                 if line.split("=", 1)[0] in extra else line for line in lines]
        lines += [f"{k}={v}" for k, v in extra.items()]
        self.conf.write_text("\n".join(lines) + "\n")
        (r / "plugstack.conf").write_text("")

    def _spawn(self, name: str, argv: list, log: Path | None = None) -> None:
        out = self.root / "log" / f"{name}.out"
        self._logs[name] = log or self.root / "log" / f"{name}.log"
        self._logs[name + " (stdout/stderr)"] = out
        with out.open("ab") as f:
            self._procs[name] = subprocess.Popen(argv, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, cwd=self.root,
                                                 start_new_session=True, preexec_fn=_die_with_parent)

    def _check_alive(self) -> None:
        for name, p in self._procs.items():
            if p.poll() is not None:
                raise SlurmError(f"{name} exited with status {p.returncode}:\n{self._log_tails()}")

    def _log_tails(self) -> str:
        # A daemon in the foreground writes its log to stderr too: show its .out only before the log exists.
        shown = []
        for name, path in self._logs.items():
            if name.endswith("(stdout/stderr)") and self._logs.get(name.split()[0], Path("/-")).exists():
                continue
            if path.exists():
                shown.append(f"--- {name}: {path}\n{_tail(path)}")
        return "\n".join(shown)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while True:
            self._check_alive()
            r = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False, timeout=15)
            state = r.stdout.strip()
            if r.returncode == 0 and state in ("idle", "mixed", "allocated"):
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"node {self.node} not idle after {self.start_timeout:.0f} s "
                                 f"(sinfo: {state!r} {r.stderr.strip()!r}):\n{self._log_tails()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, stop slurmd, slurmctld and munged, and kill any process left of this cluster."""
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--user=root", check=False, timeout=15)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    r = self.run("squeue", "-h", "-o", "%i", check=False, timeout=15)
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self._procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self._procs.clear()
        self.leftovers = self._kill_leftovers()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _kill_leftovers(self) -> list[int]:
        """Kill the processes that still carry this cluster's SLURM_CONF (slurmstepd, job tasks)."""
        mark = b"\0SLURM_CONF=" + str(self.conf).encode() + b"\0"
        me = os.getpid()
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == me:
                continue
            try:
                environ = b"\0" + (d / "environ").read_bytes() + b"\0"
            except OSError:
                continue
            if mark in environ:
                found.append(int(d.name))
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return found

    # ------------------------------------------------------------------------------------------- commands
    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """A Slurm command against this cluster (SLURM_CONF set); check: raise with its stderr on failure."""
        e = dict(self.env, **(env or {}))
        r = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], env=e, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def submit(self, script: str | os.PathLike, *sbatch_args: str, env: dict | None = None,
               cwd: str | os.PathLike | None = None) -> int:
        """sbatch a script (its text, if it starts with '#!', else a path) and return the job id.

        env: added to the environment sbatch passes on to the job (--export=ALL is the default).
        cwd: the job's working folder (default: this cluster's folder); relative output paths land there.
        """
        text = str(script)
        args = list(sbatch_args)
        if text.startswith("#!"):
            jobs = self.root / "scripts"
            jobs.mkdir(exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=jobs)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            path = Path(name)
        else:
            path = Path(text).resolve()
        workdir = Path(cwd or self.root).resolve()
        r = self.run("sbatch", "--parsable", f"--chdir={workdir}", *args, str(path), env=env)
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ExitCode, StdOut, EligibleTime, ...)."""
        r = self.run("scontrol", "show", "job", "-d", str(job_id), check=False, timeout=30)
        if r.returncode != 0:
            raise SlurmError(f"scontrol show job {job_id}: {r.stderr.strip()}")
        return parse_fields(r.stdout)

    def state(self, job_id: int) -> str:
        return self.job(job_id)["JobState"]

    def wait(self, job_id: int, timeout: float = 120, states: set[str] | None = None,
             poll: float = 0.5) -> dict[str, str]:
        """Wait until the job is in one of `states` (default: a final one) and return its fields.

        A requeued job keeps its id: its Restarts field counts the requeues. On timeout: SlurmError with
        the job's fields and the tails of the daemon logs.
        """
        want = states or FINAL_STATES
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in want:
                return info
            if time.monotonic() > deadline:
                self._check_alive()
                raise SlurmError(f"job {job_id} not in {sorted(want)} after {timeout:.0f} s: "
                                 f"{info.get('JobState')} (Reason={info.get('Reason')}):\n"
                                 f"{self._log_tails()}")
            self._check_alive()
            time.sleep(poll)

    def signal_batch(self, job_id: int, sig: str = "TERM") -> None:
        """Send `sig` to the batch script's shell only (scancel -s SIG --batch), as a preemption notice."""
        self.run("scancel", "-s", sig, "--batch", str(job_id))

    def requeue(self, job_id: int) -> None:
        self.run("scontrol", "requeue", str(job_id))

    def cancel(self, job_id: int) -> None:
        self.run("scancel", str(job_id), check=False)

    def output(self, job_id: int) -> str:
        """The text of the job's StdOut file ('' while it does not exist)."""
        path = Path(self.job(job_id)["StdOut"])
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tails(self) -> str:
        """The last lines of each daemon's log, for failure messages."""
        return self._log_tails()
