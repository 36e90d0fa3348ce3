#!/usr/bin/env bash
# The GPU check's data (see benchmarks/gpu/README.md): rebuilds everything under .gpu/ (git-ignored) that the
# device calls carry; run here, in the repo root; ~10 min, mostly xz.
# ONLY_BENTO=1: just the bento + parity rows (~3 min, from HEAD); SKIP_BENTO=1: just the wheels and the archive.
#   .gpu/p1/ortgpu.tar.xz.part1, .gpu/p2/ortgpu.tar.xz.part2: onnxruntime-gpu 1.31.1 cp312 (wheel unpacked, the
#       TensorRT provider dropped, CUDA provider pruned to sm_90 cubins by prune_fatbin.py), tar | xz -9e, split
#   .gpu/run/whl/*.whl: bentoml 1.4.39 and what it needs that the device image lacks (cp312, lock versions)
#   .gpu/run/bento.bento, .gpu/run/parity.npz: the GPU bento of a scratch build, 1000 rows + the CPU answers
# Needs: .venv (the project's), ptxas (/usr/local/cuda-13.0/bin) for the stub cubins, xz, network to PyPI.
set -euo pipefail
ROOT=$(pwd); G=$ROOT/.gpu; W=${WORK:-/tmp/gpuprep}; mkdir -p "$W" "$G/run/whl" "$G/p1" "$G/p2"
PIPDL=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)

# 1. the bento and the parity rows, from a scratch copy of HEAD (BENTOML_HOME inside it)
if [ "${SKIP_BENTO:-}" != 1 ]; then
  rm -rf "$W/proj" && mkdir -p "$W/proj" && git archive HEAD | tar -x -C "$W/proj"
  (cd "$W/proj" && git init -q && git add -A && git -c user.email=x@x -c user.name=x commit -qm snapshot
   export BENTOML_HOME=$W/proj/.bentoml PLOOMBER_STATS_ENABLED=false BENTOML_DO_NOT_TRACK=true DO_NOT_TRACK=1 \
          MLFLOW_DISABLE_TELEMETRY=true MLOPS_NB_TRAINING_EPOCHS=12 PYTHONPATH=$W/proj PATH=$ROOT/.venv/bin:$PATH
   ploomber build > "$W/build.log" 2>&1
   mlops-nb deploy --gpu
   rm -f "$G/run/bento.bento"; bentoml export digits_service-gpu:latest "$G/run/bento.bento"
   model=$(dirname "$(ls -t .bentoml/models/*/*/model.onnx | head -1)")
   PYTHONPATH= "$ROOT/.venv/bin/python" "$ROOT/benchmarks/gpu/make_parity.py" "$W/proj" "$model" "$G/run/parity.npz")
fi
[ "${ONLY_BENTO:-}" = 1 ] && exit 0

# 2. wheels: the closure of bentoml/orjson/httptools/pydantic/uvicorn missing from the device image (KINDS.md),
#    plus a few the image has but whose version matters (typing-extensions>=4.16 for pydantic 2.14, ...)
rm -f "$G/run/whl/"*.whl
"${PIPDL[@]}" -d "$G/run/whl" a2wsgi==1.10.10 aiohttp-asgi-connector==1.2.0 aiosqlite==0.22.1 annotated-types==0.8.0 \
  asgiref==3.13.0 bentoml==1.4.39 cattrs==23.1.2 click-option-group==0.5.9 httptools==0.9.0 httpx-ws==0.9.0 \
  kantoku==0.18.3 opentelemetry-api==1.45.1 opentelemetry-instrumentation==0.66b1 \
  opentelemetry-instrumentation-aiohttp-client==0.66b1 opentelemetry-instrumentation-asgi==0.66b1 \
  opentelemetry-sdk==1.45.1 opentelemetry-semantic-conventions==0.66b1 opentelemetry-util-http==0.66b1 \
  orjson==3.13.0 pip-requirements-parser==32.0.1 pydantic==2.14.3 pydantic-core==2.50.4 python-json-logger==4.2.0 \
  python-multipart==0.0.34 pyzmq==27.3.0 rich-toolkit==0.20.6 schema==0.7.8 simple-di==0.1.5 starlette==1.10.0 \
  tomli-w==1.2.0 tornado==6.6.1 typing-inspection==0.4.5 uvicorn==0.54.0 watchfiles==1.3.0 wsproto==1.3.2 \
  typing-extensions==4.16.0 anyio==4.16.0 click==8.5.1 fsspec==2026.9.0 attrs==26.1.0 h11==0.16.0

# 3. onnxruntime-gpu: unpack, drop TensorRT, prune the CUDA provider's fatbins to sm_90 (stubs for the rest)
"${PIPDL[@]}" -d "$W" onnxruntime-gpu==1.31.1
mkdir -p "$W/stubs"
for sm in 75 80 86 89 120a; do
  printf '.version 9.0\n.target sm_%s\n.address_size 64\n' $sm > "$W/stubs/e$sm.ptx"
  /usr/local/cuda-13.0/bin/ptxas -arch=sm_$sm "$W/stubs/e$sm.ptx" -o "$W/stubs/e${sm%a}.cubin"
done
rm -rf "$W/site" && mkdir -p "$W/site" && (cd "$W/site" && unzip -q "$W"/onnxruntime_gpu-1.31.1-cp312-*.whl)
rm "$W/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so"
python3 "$ROOT/benchmarks/gpu/prune_fatbin.py" "$W/site/onnxruntime/capi/libonnxruntime_providers_cuda.so" --stubs "$W/stubs" 90
(cd "$W/site" && tar -cf - --sort=name --owner=0 --group=0 --mtime=2026-01-01 onnxruntime \
   onnxruntime_gpu-1.31.1.dist-info | xz -9e -T2 > "$W/ortgpu.tar.xz")
head -c $((44*1024*1024)) "$W/ortgpu.tar.xz" > "$G/p1/ortgpu.tar.xz.part1"
tail -c +$((44*1024*1024+1)) "$W/ortgpu.tar.xz" > "$G/p2/ortgpu.tar.xz.part2"
(cd "$G/p1" && sha256sum ortgpu.tar.xz.part1; cd "$G/p2" && sha256sum ortgpu.tar.xz.part2) > "$G/run/SHA256SUMS"
du -sb "$G"/p1 "$G"/p2 "$G"/run
