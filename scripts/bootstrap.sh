#!/usr/bin/env bash
# Installs what a run needs, idempotently: Debian packages, the virtualenv, the project.
# A second run with everything present takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
say() { printf 'bootstrap: %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ -z "${THROUGHLINE_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && ! command -v chromium-browser >/dev/null 2>&1; then
  need+=(chromium)
fi
# Headless runs use Chromium's old headless shell when it is there (playwright.config.py).
if [ -z "${THROUGHLINE_CHROMIUM:-}" ] && ! command -v chromium-headless-shell >/dev/null 2>&1; then
  need+=(chromium-headless-shell)
fi
# `make e2e HEADED=1` on a machine without a display runs under xvfb-run.
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || [ -n "${THROUGHLINE_PG_BIN:-}" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    say "missing Debian packages: ${need[*]}; run as root: apt-get install ${need[*]}" >&2; exit 1
  fi
  say "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system redis on :6379; the harness runs its own on free ports.
  if [[ " ${need[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

# --- virtualenv + project --------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.throughline-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing the project and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  # pip compiled the packages' .pyc; pytest's assertion-rewritten copies of its plugins (about
  # 300 modules) are written on first use, and never where PYTHONDONTWRITEBYTECODE is set (CI
  # images often set it): then every pytest process rewrites them again, 3 s of CPU each.
  # One collection writes them into the venv; later runs only read them, whatever that setting.
  env -u PYTHONDONTWRITEBYTECODE "$VENV/bin/python" -m pytest --collect-only -q -p no:cacheprovider \
    tests journeys >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
say "ready"
