#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs (a throw-away one-node Slurm): the Debian packages slurmd, slurmctld,
# slurm-client and munge. For CI (.ci/run calls it before `make test`), which runs as root on Debian.
# Prints one line saying what it did. Where it cannot install (not root, no apt-get, the install fails) it
# says so in one line and exits 0: CI stays green and the Slurm tests then skip, saying why.
set -uo pipefail
pkgs=(slurmd slurmctld slurm-client munge)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
else
  missing=("${pkgs[@]}")
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "[slurm] ${pkgs[*]} already installed: tests/test_slurm.py runs a one-node Slurm"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "[slurm] not root: not installing ${missing[*]}; tests/test_slurm.py will skip"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[slurm] no apt-get (not Debian): not installing ${missing[*]}; tests/test_slurm.py will skip"; exit 0
fi
log=$(mktemp /tmp/slurm_ci.XXXXXX.log)
# The packages' scripts need not start the machine's own slurmd/slurmctld/munged (the test starts private
# ones, and slurmd/slurmctld have no config yet): a policy-rc.d that says no, unless the machine has one.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  trap 'rm -f "$policy"' EXIT
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
fi
if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       "${missing[@]}"; } >"$log" 2>&1; then
  status=0
else
  status=$?
fi
if [ $status -eq 0 ]; then
  echo "[slurm] installed ${missing[*]} (apt-get): tests/test_slurm.py runs a one-node Slurm"
  rm -f "$log"
else
  echo "[slurm] apt-get install ${missing[*]} failed (exit $status, log $log): tests/test_slurm.py will skip"
fi
exit 0
