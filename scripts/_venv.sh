# Sourced by scripts/*: make sure .venv exists with chargeline and its dev tools installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "chargeline needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv …" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "installing chargeline and its dependencies into .venv …" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # PYTHONWARNINGS: the build backend's banners about editable installs drown the output.
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
