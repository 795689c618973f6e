#!/usr/bin/env bash
# One-command GPU validation of hpc_fcn on one H100/H200: at most 8 minutes of wall, set-up included.
#
#   bash tools/gpu_validate.sh            # writes under $OUT (default /tmp/gpu_validate), prints one table
#
# Stages (each with its own time limit, skipped when the overall deadline leaves too little):
#   probe     environment, and the machine's measured ceilings: bf16/tf32/fp32 GEMM, device-to-device copy
#   unit      the GPU unit tests (they skip without a GPU; the CPU tests of the same files run too)
#   bench16   production network (720 x 1440, 20 ch, embed 768, depth 12) at batch 16: eager, fused,
#             bf16, tf32, fp16, CUDA graphs (fp32/tf32/bf16); per-variant peak memory and J/member-step
#   quant     int8 and fp8 (+bf16, graphs) at batch 16, own process (a CUDA error cannot cost the above)
#   bench1/64 batch 1 and 64
#   autompp   members_per_pass: 0 with graphs on 13 members (one rank of 100 members on 8 GPUs): the pass
#             size, peak memory against perfmodel and the per-member estimate
#   output    the output path per output step: device-to-host copy of the members and the host statistics
#   compile   torch.compile + bf16 + graphs at batch 16 (slowest stage: last)
#   report    one table: measured vs perfmodel (time, memory, energy) and the ceilings
# Power: NVML (nvidia-ml-py) inside the benchmarks, and nvidia-smi sampled every 250 ms into smi.csv.
# Without nvidia-ml-py on the machine, carry its wheel: python -m pip download --no-deps -d .whl
# nvidia-ml-py==13.615.71 (here), and it is installed into /tmp/site there.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_validate}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HPC_FCN_TEST_THREADS=8 OMP_NUM_THREADS=8 \
       TORCHINDUCTOR_CACHE_DIR=/tmp/inductor TORCHINDUCTOR_COMPILE_THREADS=16 GPUVAL_OUT="$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$SECONDS
DEADLINE=${DEADLINE:-440}   # seconds for every stage but the report (which gets its own 25 s)
: > "$OUT/summary.txt"

if ! $PY -c "import pynvml" 2>/dev/null && ls .whl/nvidia_ml_py-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_ml_py-*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

stage() {  # stage NAME LIMIT MIN cmd...: skipped when fewer than MIN seconds are left; LIMIT capped by the deadline
  local name=$1 limit=$2 min=$3; shift 3
  local left=$((DEADLINE - (SECONDS - T0)))
  if [ "$left" -lt "$min" ]; then echo "$name SKIPPED (${left}s left)" | tee -a "$OUT/summary.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$((SECONDS - T0))s] $name (limit ${limit}s)"
  local t=$SECONDS
  timeout -k 5 "$limit" "$@"
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t))s" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,clocks.mem,memory.used,utilization.gpu \
  --format=csv,noheader,nounits -lms 250 > "$OUT/smi.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT
BENCH="$PY bench/inference.py --production --threads 8"

stage probe 45 15 $PY - <<'EOF'
import importlib, json, os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(),
      torch.cuda.get_device_capability(), "free/total GiB %.1f/%.1f" % tuple(v / 2**30 for v in torch.cuda.mem_get_info()))
for m in ("triton", "pynvml", "torch_harmonics", "mpi4py", "netCDF4"):
    try:
        importlib.import_module(m); print(m, "ok")
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", e)
ceil = {}
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
for name, dt, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    n = 8192 if name != "fp32" else 4096
    a = torch.randn(n, n, device="cuda", dtype=dt); b = torch.randn_like(a)
    for _ in range(3): a @ b
    reps = 20 if name == "bf16" else 10
    s.record(); [a @ b for _ in range(reps)]; e.record(); torch.cuda.synchronize()
    ceil[f"gemm_{name}_tflops"] = reps * 2 * n**3 / (s.elapsed_time(e) / 1e3) / 1e12
torch.backends.cuda.matmul.allow_tf32 = False
x = torch.randn(2**29, device="cuda"); y = torch.empty_like(x); y.copy_(x)
s.record(); [y.copy_(x) for _ in range(20)]; e.record(); torch.cuda.synchronize()
ceil["copy_tbps"] = 20 * 2 * x.nbytes / (s.elapsed_time(e) / 1e3) / 1e12
print("CEILINGS", json.dumps({k: round(v, 2) for k, v in ceil.items()}))
open(os.path.join(os.environ["GPUVAL_OUT"], "ceilings.json"), "w").write(json.dumps(ceil))
EOF

stage unit 100 40 $PY -m pytest -q -p no:cacheprovider -rs -m "not slow" tests/test_accel.py tests/test_forecaster.py \
  tests/test_tracing.py tests/test_perturb.py tests/test_power.py

stage bench16 110 60 $BENCH --members 16 --reps 4 --json "$OUT/bench16.json" \
  --variants fused_batched bf16 tf32 fp16 cuda_graphs tf32_graphs bf16_graphs
stage quant 70 40 $BENCH --members 16 --reps 3 --json "$OUT/bench16q.json" --variants int8 fp8_bf16_graphs
stage bench1 45 25 $BENCH --members 1 --reps 8 --energy-seconds 0.5 --json "$OUT/bench1.json" \
  --variants bf16 tf32 bf16_graphs tf32_graphs
stage bench64 90 50 $BENCH --members 64 --reps 2 --json "$OUT/bench64.json" --variants bf16_graphs tf32_graphs fp8_bf16_graphs

stage autompp 50 30 $PY - <<'EOF'
import json, os, time, torch
import perfmodel as pm
from hpc_fcn.accel.memory import member_bytes
from hpc_fcn.forecaster import Forecaster
from hpc_fcn.model import AFNONet
from hpc_fcn.schema import InferenceConfig
torch.manual_seed(0)
net = AFNONet(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=12).cuda().eval()
x = torch.randn(13, 20, 720, 1440, device="cuda")
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
fc = Forecaster(net, InferenceConfig(device="cuda", precision="bf16", cuda_graphs=True, members_per_pass=0))
fc.step(x); torch.cuda.synchronize()
peak = torch.cuda.max_memory_allocated() - base
t = time.perf_counter(); [fc.step(x) for _ in range(3)]; torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 3
pred = pm.predict(net.config(), hardware="h200", members=13, members_per_pass=fc.members_per_pass, precision="bf16")
res = dict(members=13, pass_size=fc.members_per_pass, limit=fc.max_members_per_pass,
           est_gb_per_member=member_bytes(net, (720, 1440), 20, "bf16", True) / 1e9, peak_gb=peak / 1e9,
           perfmodel_tensors_gb=pred.memory_inference.tensors / 1e9, step_ms=dt * 1e3, perfmodel_step_ms=pred.step_time_s * 1e3)
print("AUTOMPP", json.dumps(res))
assert fc.members_per_pass == 13, "a rank holding 13 members must run passes of 13"
open(os.path.join(os.environ["GPUVAL_OUT"], "autompp.json"), "w").write(json.dumps(res))
EOF

stage output 30 15 $PY - <<'EOF'
import json, os, time, numpy as np, torch
st = torch.randn(16, 20, 720, 1440, device="cuda"); torch.cuda.synchronize()
t0 = time.perf_counter(); host = st.cpu(); t1 = time.perf_counter()
phys = host.numpy(); s1 = phys.astype(np.float64).sum(0); s2 = ((phys - s1 / 16) ** 2).sum(0); t2 = time.perf_counter()
pinned = torch.empty(st.shape, pin_memory=True); t3 = time.perf_counter(); pinned.copy_(st); torch.cuda.synchronize()
t4 = time.perf_counter()
res = dict(members=16, d2h_s=t1 - t0, d2h_pinned_s=t4 - t3, host_stats_s=t2 - t1, gb=st.numel() * 4 / 1e9)
print("OUTPUT", json.dumps(res))
open(os.path.join(os.environ["GPUVAL_OUT"], "output.json"), "w").write(json.dumps(res))
EOF

stage compile 150 90 env TORCH_LOGS=recompiles $BENCH --members 16 --reps 2 --energy-seconds 0 \
  --json "$OUT/bench16c.json" --variants compile_bf16_graphs

DEADLINE=$((DEADLINE + 25))
stage report 25 5 $PY - <<'EOF'
import glob, json, os
import perfmodel as pm
from perfmodel.energy import predict_energy
out = os.environ["GPUVAL_OUT"]
hw = pm.load_hardware("h200")
kw = dict(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=12)
prec = lambda v: "fp8" if "fp8" in v else "bf16" if "bf16" in v else "tf32" if "tf32" in v else "fp16" if "fp16" in v else "fp32"
lines = ["| variant | batch | member-steps/s | ms/member-step | perfmodel ms | peak mem GiB | perfmodel GiB "
         "| J/member-step | perfmodel J |", "|---|---|---|---|---|---|---|---|---|"]
for path in sorted(glob.glob(os.path.join(out, "bench*.json"))):
    doc = json.load(open(path))
    for r in doc["rows"]:
        p = pm.predict(kw, hardware=hw, members=r["members"], members_per_pass=r["members_per_pass"],
                       precision=prec(r["variant"]))
        e = predict_energy(p, hw)
        ms_pred = p.passes * p.step_time_s * 1e3 / r["members"]
        j = r["joules_per_member_step"]
        lines.append(f"| {r['variant']} | {r['members']} | {r['member_steps_per_s']:.1f} | "
                     f"{1e3 / r['member_steps_per_s']:.2f} | {ms_pred:.2f} | {r['peak_mem_bytes'] / 2**30:.1f} | "
                     f"{p.memory_inference.tensors / 2**30:.1f} | {'n/a' if j is None else f'{j:.2f}'} | "
                     f"{e.joules_per_member_step:.2f} |")
for name in ("ceilings", "autompp", "output"):
    f = os.path.join(out, name + ".json")
    lines.append(f"{name}: " + (open(f).read() if os.path.exists(f) else "not measured"))
try:
    rows = [l.split(", ") for l in open(os.path.join(out, "smi.csv")) if l.count(",") >= 5]
    watts = [float(r[1]) for r in rows if r[1].replace(".", "", 1).isdigit()]
    lines.append(f"nvidia-smi power: mean {sum(watts) / len(watts):.0f} W, peak {max(watts):.0f} W over {len(watts)} samples")
except Exception as exc:  # noqa: BLE001
    lines.append(f"nvidia-smi power: not read ({exc})")
open(os.path.join(out, "report.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

echo "=== done at $((SECONDS - T0))s"
cat "$OUT/summary.txt"
