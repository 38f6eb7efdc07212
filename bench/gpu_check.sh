#!/usr/bin/env bash
# The first GPU run, prepared: one script a GPU machine without network runs from a copy of the repository.
#
#   bench/gpu_check.sh --download   # HERE, with network: the wheels of bench/gpu_wheels.txt into .whl/
#   bench/gpu_check.sh              # ON THE GPU MACHINE, from the repository root (device tool:
#                                   #   command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 600)
#   bench/gpu_check.sh --tiny       # CPU, demo sizes: the same steps, for CI (tests/test_gpu_check.py)
#
# Steps (each printed as it runs, with its time and exit status; a failed step does not stop the later ones,
# the exit status says whether any failed):
#   wheels  install .whl/*.whl into a private folder (pip --no-index --no-deps --target), PYTHONPATH to it;
#           a binary wheel for another Python than this machine's is named and refused
#   env     bench/gpu_env_check.py: every requirement of pyproject.toml and of the brought wheels, by name
#   smoke   tests/test_gpu_smoke.py on CUDA (FLUX_TEST_DEVICE=cuda): demo model, bf16, compiled: strength 0 ==
#           base bit for bit, no residue, 0 recompiles across switches, previews, a real CUDA OOM -> 503
#   bench   bench/gpu_flux.py --quick: full-size FLUX.1-dev architecture, s/step, s/image, switch ms, ...
#   bound   bench/fused_vs_peft.py: fused vs PEFT pixel bound in bf16 on this device
#   memory  bench/flux_memory.py: the meta-device memory table (no GPU needed; for the record)
#   pinned  (only when named in GPU_CHECK_STEPS) tests/test_fused_adapters.py, which compares with CPU
#           references, on a machine that has a GPU: the pinned devices of tests/conftest.py at work
# GPU_CHECK_STEPS="smoke bench" runs only those (default: every step but pinned). Each GPU step has a time
# limit (smoke 150 s, bench 320 s, bound 80 s, pinned 120 s) so the whole run ends inside the device tool's
# 600 s per command even when one step hangs. Results go to $OUT (the device tool's folder) when set,
# else out/gpu_check/: gpu_check.log, summary.txt, smoke.xml, gpu_flux.md, gpu_flux.json, fused_vs_peft.md,
# flux_memory.md (8 files at most: the device tool brings back 8).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=gpu
case "${1:-}" in
  --download) MODE=download ;;
  --tiny) MODE=tiny ;;
  "") ;;
  -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "unknown option: $1 (use --download, --tiny or nothing)" >&2; exit 2 ;;
esac
WHEELS="$ROOT/bench/gpu_wheels.txt"
pins() { sed 's/#.*//' "$WHEELS" | awk NF; }                    # name==version, comments dropped
built_here() { grep '# built here' "$WHEELS" | sed 's/#.*//' | awk NF; }  # sdist-only pins

if [ "$MODE" = download ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  GPU_PYTHON=${GPU_PYTHON:-3.12}
  tmp=$(mktemp -d)
  # shellcheck disable=SC2046
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp" \
    $(pins | grep -v -x -F -f <(built_here)) || { echo "download failed"; exit 1; }
  # shellcheck disable=SC2046
  "$PY" -m pip wheel -q --no-deps -w "$tmp" $(built_here) || { echo "building the sdist-only wheels failed"; exit 1; }
  rm -rf .whl && mkdir -p .whl && mv "$tmp"/*.whl .whl/ && rmdir "$tmp"
  total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
  echo "$(ls .whl | wc -l) wheels in .whl/ for Python $GPU_PYTHON: $((total / 1048576)) MiB"
  if [ "$total" -gt $((56 * 1048576)) ]; then
    echo "too large: the device tool carries 64 MiB with the repository; drop a wheel from $WHEELS"; exit 1
  fi
  exit 0
fi

OUT_DIR=${OUT:-$ROOT/out/gpu_check}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
SUMMARY="$OUT_DIR/summary.txt"
: >"$LOG"; : >"$SUMMARY"
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded (the demo model is built locally)
FAILED=0
say() { echo "$*" | tee -a "$LOG"; }
# run NAME COMMAND...: one step, its output into the log as it comes, one summary line
run() {
  local name=$1; shift
  local steps=${GPU_CHECK_STEPS:-wheels env smoke bench bound memory}
  if [[ " $steps " != *" $name "* ]]; then return 0; fi
  say ""; say "=== $name: $* ($(date -u +%H:%M:%S))"
  local started=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local line="$name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - started))s"
  say "=== $line"; echo "$line" >>"$SUMMARY"
  [ "$rc" = 0 ] || FAILED=1
  return 0
}

install_wheels() {
  local tag missing=0
  tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  echo "Python: $("$PY" -V 2>&1) ($tag) at $(command -v "$PY")"
  [ -d .whl ] || { echo "no .whl/ folder: run 'bench/gpu_check.sh --download' where pip has the network and carry .whl"; return 1; }
  while read -r pin; do
    local name=${pin%%==*} version=${pin##*==}
    local file=${name//-/_}
    if ! compgen -G ".whl/${file}-${version}-*.whl" >/dev/null && ! compgen -G ".whl/${name}-${version}-*.whl" >/dev/null; then
      echo "missing wheel: $pin"; missing=1
    fi
  done < <(pins)
  for w in .whl/*-cp3*.whl; do
    [ -e "$w" ] || continue
    case "$w" in *"-$tag-"*) ;; *) echo "binary wheel $w is not for this Python ($tag): GPU_PYTHON=${tag:2:1}.${tag:3} bench/gpu_check.sh --download"; missing=1 ;; esac
  done
  [ "$missing" = 0 ] || return 1
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || return 1
  echo "installed $(ls .whl/*.whl | wc -l) wheels into $SITE"
}

if [ "$MODE" = tiny ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  say "gpu_check --tiny: CPU, demo sizes ($("$PY" -V 2>&1))"
  GPU_CHECK_STEPS=${GPU_CHECK_STEPS:-env smoke bench bound memory}
  run env "$PY" bench/gpu_env_check.py
  run smoke env FLUX_TEST_DEVICE=cpu "$PY" -m pytest tests/test_gpu_smoke.py -q -p no:cacheprovider \
    --junitxml="$OUT_DIR/smoke.xml"
  run bench "$PY" bench/gpu_flux.py --tiny --switches 4 --switch-reps 4 --out "$OUT_DIR"
  run bound "$PY" bench/fused_vs_peft.py --device cpu --dtype bfloat16 --seeds 1 --strengths 1.0 --steps 2 --out "$OUT_DIR"
  run memory sh -c "\"$PY\" bench/flux_memory.py > \"$OUT_DIR/flux_memory.md\""
else
  PY=${PYTHON:-python3}
  SITE=${GPU_CHECK_SITE:-/tmp/flux-gpu-site}
  [ -z "${GPU_CHECK_STEPS:-}" ] || GPU_CHECK_STEPS="wheels $GPU_CHECK_STEPS"  # a fresh machine needs them first
  say "gpu_check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
  run wheels install_wheels
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  run env "$PY" bench/gpu_env_check.py
  run smoke timeout 150 env FLUX_TEST_DEVICE=cuda "$PY" -m pytest tests/test_gpu_smoke.py -v -p no:cacheprovider \
    --junitxml="$OUT_DIR/smoke.xml"
  run bench timeout 320 "$PY" bench/gpu_flux.py --quick --out "$OUT_DIR"
  run bound timeout 80 "$PY" bench/fused_vs_peft.py --device cuda --dtype bfloat16 --out "$OUT_DIR"
  run memory sh -c "\"$PY\" bench/flux_memory.py > \"$OUT_DIR/flux_memory.md\""
  run pinned timeout 120 "$PY" -m pytest tests/test_fused_adapters.py -q -x -p no:cacheprovider
fi
say ""; say "summary:"; cat "$SUMMARY" | tee -a "$LOG"
exit $FAILED
