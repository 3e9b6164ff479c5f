#!/usr/bin/env bash
# The wheels a lent GPU machine needs for benchmarks/device_suite.py, downloaded HERE.
#
#   bash launch/device_wheels.sh              # -> .whl/*.whl and .whl/data/*.npz
#   bash launch/device_wheels.sh --no-data    # the wheels only
#
# Run it on a machine with pip and the package index. The device machines (docs/benchmarks.md,
# "On a GPU or TPU") run Python 3.12 on x86-64 with jax, flax, optax, orbax-checkpoint,
# tensorboard, numpy, scikit-learn, matplotlib and more installed, but reach no package
# index: what jaxhybrid needs at run time and that image lacks travels as wheels in .whl/
# (git-ignored; name it in the device call's carry). PACKAGES below is that list: the
# pyproject.toml dependencies the image lacks and, recursively, their own run-time
# requirements that it lacks; each version is the one .ci/constraints-newest.txt pins (the
# newest end of the tested range, Python 3.12). A package with no wheel on the index (promise:
# an sdist only) is built into a pure-Python wheel here. After downloading, every wheel's
# Requires-Dist (markers read for CPython 3.12 on Linux x86-64) is checked to be carried or
# in the image: the script fails, naming them, when one is neither.
#
# jaxhybrid itself is not carried as a wheel: device_suite.py runs the checkout (it puts the
# repository first on sys.path and on its subprocesses' PYTHONPATH), so nothing needs
# building there. The HVAE stage's data (fashion_mnist.npz, mnist.npz from
# $JAXHYBRID_FASHION_MNIST_NPZ / $JAXHYBRID_MNIST_NPZ or ../shared/data) are copied into
# .whl/data/, which device_suite.py --budget_s reads when those variables are unset.
#
# Idempotent: a wheel already there is kept, any other file in .whl/ (an old version) is
# removed. Prints each file with its size and the total; fails when .whl/, or the whole
# tree that travels to the device (git's tracked and untracked-not-ignored files plus
# .whl/), is over 64 MiB.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${DEVICE_WHEELS_DIR:-$REPO/.whl}
CONSTRAINTS=$REPO/.ci/constraints-newest.txt
LIMIT_MIB=64
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
WITH_DATA=1
for arg in "$@"; do
  case $arg in
    --no-data) WITH_DATA=0 ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "device_wheels.sh: unknown argument $arg (valid: --no-data)" >&2; exit 2 ;;
  esac
done

# What jaxhybrid needs at run time and the device image lacks (the name as pip knows it,
# then who needs it). Versions: $CONSTRAINTS.
PACKAGES=(
  ml-collections            # jaxhybrid (configs, flags)
  tensorflow-datasets       # jaxhybrid (tfds.data_source)
  array-record              # jaxhybrid, tensorflow-datasets
  dm-tree                   # tensorflow-datasets
  immutabledict             # tensorflow-datasets
  promise                   # tensorflow-datasets (an sdist only: built into a wheel here)
  simple-parsing            # tensorflow-datasets
  docstring-parser          # simple-parsing
  tensorflow-metadata       # tensorflow-datasets
  googleapis-common-protos  # tensorflow-metadata
  termcolor                 # tensorflow-datasets
  toml                      # tensorflow-datasets
)

# The device image's Python packages: /work/.library/device/KINDS.md, "Python packages
# already there" (read on a machine on 2026-11-17). A requirement on one of these is met there.
IMAGE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done

norm() { tr 'A-Z_.' 'a-z--' <<<"$1"; }          # pip's name normalisation (PEP 503)
pin() {                                         # NAME -> the version $CONSTRAINTS pins
  local want line
  want=$(norm "$1")
  while IFS= read -r line; do
    [[ $line == *==* ]] || continue
    if [[ $(norm "${line%%==*}") == "$want" ]]; then echo "${line#*==}"; return; fi
  done <"$CONSTRAINTS"
  echo "device_wheels.sh: $1 has no pin in $CONSTRAINTS" >&2; return 1
}
wheel_of() {                                    # NAME VERSION -> the wheel in $DEST, if any
  local stem
  stem=$(tr 'A-Z.-' 'a-z__' <<<"$1-$2-")
  for f in "$DEST"/*.whl; do
    [[ -e $f ]] || continue
    [[ $(tr 'A-Z.-' 'a-z__' <<<"$(basename "$f")") == "$stem"* ]] && { echo "$f"; return 0; }
  done
  return 0
}

mkdir -p "$DEST"
keep=()
for name in "${PACKAGES[@]}"; do
  version=$(pin "$name")
  have=$(wheel_of "$name" "$version")
  if [[ -z $have ]]; then
    echo "+ $name==$version"
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
         --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$name==$version"; then
      echo "  no wheel on the index: building one from the sdist (pure Python only)"
      "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$name==$version"
    fi
    have=$(wheel_of "$name" "$version")
    [[ -n $have ]] || { echo "device_wheels.sh: no wheel of $name==$version in $DEST" >&2; exit 1; }
    case $have in
      *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*.whl|*-abi3-*.whl) ;;
      *) echo "device_wheels.sh: $(basename "$have") does not run on CPython 3.12" >&2; exit 1 ;;
    esac
  fi
  keep+=("$(basename "$have")")
done
for f in "$DEST"/*; do                          # one version of each: drop anything else
  [[ -f $f ]] || continue
  base=$(basename "$f")
  [[ " ${keep[*]} " == *" $base "* ]] || { echo "- $base (not in the list)"; rm -f "$f"; }
done

if [[ $WITH_DATA == 1 ]]; then
  mkdir -p "$DEST/data"
  for pair in fashion_mnist:JAXHYBRID_FASHION_MNIST_NPZ mnist:JAXHYBRID_MNIST_NPZ; do
    name=${pair%%:*} env=${pair#*:}
    src=${!env:-$REPO/../shared/data/$name.npz}
    if [[ -f $src ]]; then
      cmp -s "$src" "$DEST/data/$name.npz" || cp "$src" "$DEST/data/$name.npz"
    else
      echo "note: $src is missing: the device suite will skip the HVAE run" >&2
    fi
  done
else
  rm -rf "$DEST/data"
fi

# Every Requires-Dist of every wheel: carried, or in the image (else fail, naming them).
"$PYTHON" - "$DEST" "$IMAGE_HAS" "${PACKAGES[@]}" <<'PY'
import glob, os, re, sys, zipfile
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
dest, image, carried = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image, carried = {norm(n) for n in image}, {norm(n) for n in carried}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
missing, overlap = [], sorted(carried & image)
for whl in sorted(glob.glob(os.path.join(dest, "*.whl"))):
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker and not req.marker.evaluate({**env, "extra": ""}):
            continue
        if norm(req.name) not in image | carried:
            missing.append(f"{req} (required by {os.path.basename(whl)})")
if overlap:
    sys.exit(f"device_wheels.sh: the image already has {', '.join(overlap)}: drop them")
if missing:
    sys.exit("device_wheels.sh: neither carried nor in the image:\n  " + "\n  ".join(missing))
print(f"requirements: every Requires-Dist of {len(glob.glob(os.path.join(dest, '*.whl')))} "
      f"wheels is carried or in the image")
PY

# Sizes: .whl/ and the whole tree that travels (tracked + untracked-not-ignored + .whl/).
limit=$((LIMIT_MIB * 1024 * 1024))
(cd "$DEST" && find . -type f -printf '%s\t%P\n' | sort -k2 |
  awk -F'\t' '{printf "%9.1f KiB  %s\n", $1 / 1024, $2}')
whl_bytes=$(find "$DEST" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
tree_bytes=$(cd "$REPO" && git ls-files -z -co --exclude-standard |
  xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "total: $(mib "$whl_bytes") in ${DEST#"$REPO"/}/; with the tree that travels:" \
     "$(mib $((whl_bytes + tree_bytes))) (limit $LIMIT_MIB MiB)"
if ((whl_bytes > limit || whl_bytes + tree_bytes > limit)); then
  echo "device_wheels.sh: over the device's $LIMIT_MIB MiB limit (--no-data drops the npz files)" >&2
  exit 1
fi
