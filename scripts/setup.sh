#!/usr/bin/env bash
# One-time (idempotent) set-up of everything SD3 Lab needs to build, run and test:
#   1. Debian packages (when running as root on Debian/Ubuntu): cmake, libclang-dev, OpenBLAS,
#      and what the GUI and its tests need;
#   2. the official MLX 0.32.2 wheel for this platform, pinned by version and sha256, unpacked
#      into .deps/mlx-0.32.2-<backend>/ (never installed into any Python);
#   3. a private Python virtual environment .deps/venv with the test oracles (numpy).
# Usage: scripts/setup.sh [--no-apt] [--no-python]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MLX_VERSION=0.32.2
DEPS="$ROOT/.deps"
mkdir -p "$DEPS"

want_apt=1; want_python=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) want_apt=0 ;;
    --no-python) want_python=0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

os=$(uname -s); arch=$(uname -m)
backend=${SD3LAB_MLX_BACKEND:-}
if [ -z "$backend" ]; then
  if [ "$os" = Darwin ]; then backend=metal; else backend=cpu; fi
fi

# ---------------------------------------------------------------- 1. system packages
if [ "$os" = Linux ] && [ "$want_apt" = 1 ] && command -v apt-get >/dev/null; then
  pkgs=(cmake libclang-dev libopenblas0-pthread python3-venv xvfb xauth
        libxkbcommon-x11-0 libegl1 libegl-mesa0 libgl1-mesa-dri libwayland-client0
        libx11-xcb1 libxcursor1 libxi6 libxrandr2)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
      exit 1
    fi
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# ---------------------------------------------------------------- 2. the MLX wheel
case "$os-$arch-$backend" in
  Linux-x86_64-cpu)
    pkg=mlx-cpu; platform=manylinux_2_35_x86_64
    sha=fc5d31b90fc4f457b2f9614ed45651a567d22a6a11a03d114a90a4e10bdd8878 ;;
  Linux-x86_64-cuda12)
    pkg=mlx-cuda-12; platform=manylinux_2_35_x86_64
    sha=35445ead9724855826f310b9085d57137d0a2c5381cc293cb6d86b03bb4feadf ;;
  Darwin-arm64-metal)
    # The wheel built for the oldest supported macOS (14) runs on every later one.
    pkg=mlx-metal; platform=macosx_14_0_arm64
    sha=3825fff379dbc107dd3413e564a06caeaa24819910ec49c0439e454c06a1b9b8 ;;
  *)
    echo "setup: no pinned MLX $MLX_VERSION wheel for $os $arch backend '$backend'" >&2
    echo "       (supported: Linux x86_64 cpu|cuda12, macOS arm64 metal; or set MLX_DIST_DIR to an unpacked wheel)" >&2
    exit 1 ;;
esac
dist="$DEPS/mlx-$MLX_VERSION-$backend"
if [ ! -f "$dist/.complete" ]; then
  wheels="$DEPS/wheels"; mkdir -p "$wheels"
  req="$wheels/$pkg.requirements.txt"
  echo "$pkg==$MLX_VERSION --hash=sha256:$sha" > "$req"
  echo "setup: fetching $pkg==$MLX_VERSION ($platform) from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$platform" \
    --require-hashes -r "$req" -d "$wheels"
  wheel=$(ls "$wheels"/"${pkg//-/_}"-"$MLX_VERSION"-*"$platform"*.whl | head -n1)
  got=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$wheel")
  [ "$got" = "$sha" ] || { echo "setup: sha256 mismatch for $wheel: $got" >&2; exit 1; }
  rm -rf "$dist.tmp"
  python3 - "$wheel" "$dist.tmp" <<'PY'
import os, stat, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        path = z.extract(info, out)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode | stat.S_IRUSR)
PY
  rm -rf "$dist"; mv "$dist.tmp" "$dist"; touch "$dist/.complete"
  echo "setup: MLX $MLX_VERSION ($backend) unpacked into ${dist#$ROOT/}"
fi

# ---------------------------------------------------------------- 3. Python test oracles
if [ "$want_python" = 1 ]; then
  venv="$DEPS/venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    python3 -m venv "$venv"
  fi
  stamp="$venv/.oracles-$(cat scripts/oracle-requirements.txt scripts/oracle-requirements-nodeps.txt | python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
  if [ ! -f "$stamp" ]; then
    echo "setup: installing the Python test oracles into .deps/venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/oracle-requirements.txt
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r scripts/oracle-requirements-nodeps.txt
    rm -f "$venv"/.oracles-*; touch "$stamp"
  fi
fi
echo "setup: done"
