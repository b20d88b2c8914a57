#!/usr/bin/env bash
# Installs Open WebUI into a venv of its own (never the project's .venv: its pins would fight ours).
# The venv lives in the user's cache (one per version, shared by every checkout on the machine);
# .venv-targets/open-webui links to it. Idempotent: with everything present a run costs well
# under a second. A failed install removes the half-made venv, so the next run starts clean.
set -euo pipefail
cd "$(dirname "$0")/../.."

OWUI_VERSION="${OWUI_VERSION:-0.12.4}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"   # a CPU build of exactly this one lies on disk here
CACHE="${THROUGHLINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/throughline}"
VENV="${OWUI_VENV:-$CACHE/venvs/open-webui-$OWUI_VERSION}"
LINK=".venv-targets/open-webui"
LOG="$CACHE/venvs/open-webui-$OWUI_VERSION-install.log"
NEED_MB=4000
# --platform-coverage runs the service under coverage.py (docs/platform-coverage.md): it must be in
# this venv too. Its data files are combined by the project's coverage.py: same major version.
COVERAGE_SPEC="${COVERAGE_SPEC:-coverage>=7.10,<8}"
say() { printf 'open-webui bootstrap: %s\n' "$*"; }

with_coverage() {
  "$VENV/bin/python" -c 'import coverage' 2>/dev/null && return 0
  mkdir -p "$(dirname "$LOG")"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$COVERAGE_SPEC" >>"$LOG" 2>&1
}

link() {
  mkdir -p "$(dirname "$LINK")"
  if [ "$(readlink "$LINK" 2>/dev/null)" != "$VENV" ]; then
    rm -rf "$LINK"
    ln -s "$VENV" "$LINK"
  fi
}

stamp="$VENV/.installed"
want="open-webui==$OWUI_VERSION torch==$TORCH_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/open-webui" ]; then
  with_coverage
  link
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
free_mb=$(df -Pm "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
if [ "$free_mb" -lt "$NEED_MB" ]; then
  say "not enough disk space: ${free_mb} MB free in $(dirname "$VENV"), the venv needs about ${NEED_MB} MB" >&2
  exit 1
fi

rm -rf "$VENV"
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    rm -rf "$VENV"
    say "install failed (exit $rc); nothing was left behind. Log: $LOG; its last lines:" >&2
    tail -n 15 "$LOG" >&2 || true
  fi
}
trap cleanup EXIT
say "installing torch==$TORCH_VERSION (CPU) then open-webui==$OWUI_VERSION into $VENV (a few minutes, 3 GB)"
: > "$LOG"
python3 -m venv "$VENV" >>"$LOG" 2>&1
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" >>"$LOG" 2>&1
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "open-webui==$OWUI_VERSION" >>"$LOG" 2>&1
with_coverage
"$VENV/bin/python" -m pip check >>"$LOG" 2>&1
echo "$want" > "$stamp"
link
say "ready: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("open-webui", m.version("open-webui"))')"
