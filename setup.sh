#!/usr/bin/env bash
# Set up specfm in ./.venv: pinned dependencies, the package itself, and the `slurm` profile.
# Idempotent: a second run with an unchanged requirements.lock only re-checks the profile link.
#   bash setup.sh            # then: .venv/bin/snakemake --cores all
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.specfm-installed

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: specfm needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi

want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "setup.sh: installing pinned dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$STAMP"
fi

# `snakemake --profile slurm` looks for ./slurm, then ~/.config/snakemake/slurm. We keep the
# profile in profiles/slurm and link it into the user's config directory.
profile_home=${XDG_CONFIG_HOME:-$HOME/.config}/snakemake
mkdir -p "$profile_home"
target=$(pwd)/profiles/slurm
if [ -L "$profile_home/slurm" ] || [ ! -e "$profile_home/slurm" ]; then
  ln -sfn "$target" "$profile_home/slurm"
else
  echo "setup.sh: $profile_home/slurm exists and is not a link; left alone (use --profile profiles/slurm)" >&2
fi
echo "setup.sh: ready. Activate with: source $VENV/bin/activate"
