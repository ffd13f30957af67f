# Shared set-up for scripts/test and scripts/demo (sourced, not run).

# The venv with vlmd and vlmd-agent installed editable. torch is pinned to the CPU build that
# pip finds locally: an unpinned torch would pull a multi-GB CUDA build.
setup_venv() {
  local extras=$1
  local python=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $($python --version)"
    "$python" -m venv .venv
  fi
  local stamp=".venv/.installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ agent/pyproject.toml -nt "$stamp" ]; then
    echo "== installing vlmd[$extras] and vlmd-agent[hf,parquet] (torch CPU build)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/pip install -q 'torch==2.13.0'
    .venv/bin/pip install -q -e './agent[hf,parquet]' -e ".[$extras]"
    touch "$stamp"
  fi
}

# Debian packages the browser, systemd, Slurm and TLS tests need; installed when we are root.
setup_system_packages() {
  local need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v slurmctld >/dev/null || need+=(slurm-wlm)
  command -v munged >/dev/null || need+=(munge)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -eq 0 ]; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "!! missing system packages: ${need[*]} (not root or no apt-get): their tests will fail" >&2
    return 0
  fi
  echo "== apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
