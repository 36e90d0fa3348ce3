#!/usr/bin/env bash
# Device side of the GPU check (run from the repo root on the lent machine, with .gpu/run and .gpu/p2 carried;
# part 1 of the onnxruntime-gpu archive stashed in /tmp/stash by the previous call while the machine stayed warm).
# Installs bentoml's missing deps and the pruned onnxruntime-gpu 1.31.1 into /tmp/site, then runs gpu_check.py.
set -uo pipefail
OUT=${OUT:-/tmp/gpucheck-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
t0=$(date +%s.%N); el() { python3 -c "import time;print(f'{time.time()-$t0:.1f}s')"; }
RUN=.gpu/run; SITE=/tmp/site; PY=${PY:-python3}; WHL=${WHL:-$RUN/whl}  # WHL, LOCAL_FIXUP: local dry runs only
echo "== $(el) host $(hostname) python $($PY -V 2>&1) at $(command -v $PY); nproc $(nproc)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# 1. reassemble the onnxruntime-gpu archive: part 1 from /tmp/stash (or a copy kept in the tree), part 2 carried
P1=/tmp/stash/ortgpu.tar.xz.part1; [ -f "$P1" ] || P1=.gpu/p1/ortgpu.tar.xz.part1
P2=.gpu/p2/ortgpu.tar.xz.part2
for p in "$P1" "$P2"; do [ -f "$p" ] || { echo "MISSING $p: the machine went cold between calls; rerun call 1 then call 2"; exit 3; }; done
(cd "$(dirname "$P1")" && sha256sum ortgpu.tar.xz.part1) | cmp -s - <(grep part1 $RUN/SHA256SUMS) || { echo "part1 checksum mismatch"; sha256sum "$P1"; exit 4; }
(cd .gpu/p2 && sha256sum ortgpu.tar.xz.part2) | cmp -s - <(grep part2 $RUN/SHA256SUMS) || { echo "part2 checksum mismatch"; exit 4; }
rm -rf "$SITE"; mkdir -p "$SITE"
# 2. bentoml 1.4.39 + the deps the image lacks (cp312 wheels, pinned from requirements.lock.txt), no resolution
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $WHL/*.whl || { echo "pip install failed"; exit 5; }
echo "== $(el) wheels installed: $(ls $WHL/*.whl | wc -l)"
if command -v xz >/dev/null; then DEC="xz -dc -T0"; else DEC="$PY -c 'import lzma,sys,shutil;shutil.copyfileobj(lzma.open(sys.stdin.buffer),sys.stdout.buffer,1<<22)'"; fi
cat "$P1" "$P2" | eval "$DEC" | tar -x -C "$SITE" || { echo "onnxruntime-gpu unpack failed"; exit 6; }
[ -n "${LOCAL_FIXUP:-}" ] && eval "$LOCAL_FIXUP"
echo "== $(el) onnxruntime-gpu unpacked: $(du -sh $SITE/onnxruntime | cut -f1)"
# 3. the CUDA 13 / cuDNN wheels of the image, where onnxruntime.preload_dlls() looks (next to onnxruntime)
NV=$($PY - <<'EOF'
import os, importlib.util
try:
    import nvidia
    paths = list(nvidia.__path__)
except ImportError:
    paths = []
good = [p for p in paths if os.path.isdir(os.path.join(p, "cu13", "lib")) or os.path.isdir(os.path.join(p, "cudnn"))]
print((good or paths or [""])[0])
EOF
)
echo "== nvidia wheels at: ${NV:-NOT FOUND}"; ls "$NV" 2>/dev/null | tr '\n' ' '; echo
[ -n "$NV" ] && ln -sfn "$NV" "$SITE/nvidia"
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export BENTOML_DO_NOT_TRACK=true DO_NOT_TRACK=1 PLOOMBER_STATS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
$PY - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__)
print("available providers", ort.get_available_providers())
ort.preload_dlls()
try:
    ort.print_debug_info()
except Exception as e:
    print("print_debug_info failed", e)
EOF
echo "== $(el) running gpu_check.py"
$PY benchmarks/gpu/gpu_check.py --bento $RUN/bento.bento --parity $RUN/parity.npz --out "$OUT" --seconds ${SECONDS_PER_LEVEL:-5} ${CHECK_ARGS:-}
rc=$?
echo "== $(el) gpu_check.py exit $rc"
ls -la "$OUT"
exit $rc
