#!/usr/bin/env bash
# The GPU check: runs on the lent GPU machine (no Rust toolchain there) from binaries built
# here and carried over, and prints every figure as JSON lines. Build first, here:
#
#   cargo build --release && cargo test --release -p accel-cli --test vulkan --test cuda --no-run
#   pip install ./python                # the Python module (the dlpack part uses it; for the
#                                       # GPU machine's Python, install with that version and
#                                       # stage with PYTHON=python3.12)
#   scripts/gpu-check.sh --stage        # copies the binaries into gpu-bin/ (carried)
#
# then, on the device machine, from the repository root (gpu-bin/ and .gl/ are git-ignored:
# name both in the device tool's `carry`):
#
#   scripts/gpu-check.sh                # vulkan and cuda tests on the GPU, then the benchmarks
#
# Checked here without a GPU: the vulkan part passes on lavapipe, the cuda tests fail with
# "ACCEL_REQUIRE_CUDA is set, yet: … libcuda.so.1 not found", as they must.
#
# Vulkan: NVIDIA's driver is there but the loader may not be; when `ldconfig -p` has no
# libvulkan, the script unpacks the loader packages carried in .gl/ (see the device
# tool's notes) and points the loader at NVIDIA's ICD.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--stage" ]; then
    mkdir -p gpu-bin
    # Stripped: what is carried to the device machine is limited to 64 MiB in all.
    strip -o gpu-bin/accel target/release/accel
    for t in vulkan cuda; do
        test_bin=$(ls -t target/release/deps/$t-* 2>/dev/null | grep -v '\.d$' | head -1)
        [ -n "$test_bin" ] && strip -o "gpu-bin/$t-tests" "$test_bin"
    done
    # The Python package as installed here (built for this Python: the dlpack part runs only
    # where the GPU machine's python3 is the same version).
    # PYTHON names another interpreter (the GPU machine's version) the module was installed for.
    py=${PYTHON:-python3}
    if pkg=$(cd /tmp && "$py" -c 'import accel, os; print(os.path.dirname(accel.__file__))' 2>/dev/null); then
        rm -rf gpu-bin/python && mkdir -p gpu-bin/python/accel
        cp "$pkg"/*.py gpu-bin/python/accel/
        for so in "$pkg"/_accel*.so; do strip -o "gpu-bin/python/accel/$(basename "$so")" "$so"; done
        "$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' > gpu-bin/python/version
    fi
    ls -la gpu-bin gpu-bin/python/accel 2>/dev/null
    exit 0
fi

BIN=${BIN:-gpu-bin}
# Each step has its own time limit, so a hang costs one step, not the run.
STEP=${STEP:-150}
# PARTS picks steps (default all): vulkan cuda dlpack bench vkblocked cudabench green torch mps;
# `launch` (not in the default) is the launch-overhead figure alone, ROUNDS times (10), with
# its median; `cudaasync` (not in the default) the cuda tests, that figure and the clients'
# with the asynchronous compute engine (ACCEL_CUDA_ASYNC=1), to set against the same parts
# run without it; DEVS the benchmarked devices.
PARTS=" ${PARTS:-vulkan cuda dlpack bench vkblocked cudabench green torch mps} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# What the daemon's NVML monitor logs at start ("rows remapped …") should match.
nvidia-smi --query-remapped-rows=gpu_uuid,remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure --format=csv || true

# cuBLAS: the driver tries libcublas.so.13/.12 through the linker and /usr/local/cuda; an
# image with only a Python wheel's copy gets it named here.
if ! ldconfig -p | grep -q 'libcublas\.so' && [ -z "${ACCEL_CUBLAS:-}" ]; then
    lib=$(find /usr/local /opt /usr/lib -name 'libcublas.so.1[0-9]*' 2>/dev/null | sort | tail -1)
    if [ -n "$lib" ]; then
        export ACCEL_CUBLAS=$lib LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
fi
echo "cuBLAS: ${ACCEL_CUBLAS:-through the dynamic linker}"

if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -1) && [ -n "$icd" ]; then
    export VK_DRIVER_FILES=$icd __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

# Each driver's tests, with its ACCEL_REQUIRE_<DRIVER> set: a missing device fails them.
for t in vulkan cuda; do
    part "$t" || continue
    echo "== $t tests"
    if [ -x "$BIN/$t-tests" ]; then
        env "ACCEL_REQUIRE_${t^^}=1" ACCEL_BIN="$PWD/$BIN/accel" timeout "$STEP" "$BIN/$t-tests" --test-threads 1 || status=1
    else
        echo "no $BIN/$t-tests: run scripts/gpu-check.sh --stage after building"; status=1
    fi
done

# A cuda device's vram as a PyTorch CUDA tensor through DLPack (kDLCUDA), no copy.
if part dlpack; then
    echo "== dlpack (torch.from_dlpack of a cuda vram buffer)"
    here=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
    if [ -f "$BIN/python/version" ] && [ "$(cat "$BIN/python/version")" = "$here" ]; then
        ACCEL_BIN="$PWD/$BIN/accel" PYTHONPATH="$PWD/$BIN/python" timeout "$STEP" python3 python/tests/test_cuda_dlpack.py || status=1
    else
        echo "skipped: the staged module is for Python $(cat "$BIN/python/version" 2>/dev/null || echo '(none)'), this is $here"
    fi
fi

part bench || DEVS=" "
for dev in ${DEVS:-vulkan:0 cuda:0}; do
    echo "== bench $dev (GEMM f32 against the cpu driver; null launch round trip)"
    timeout "$STEP" "$BIN/accel" bench vulkan --device "$dev" --sizes "${SIZES:-1024,4096,8192}" --reps "${REPS:-10}" --iters 2000 || status=1
done

# The vulkan driver's other GEMM shader (GPUs take the tiled one): the figure that chose it.
if part vkblocked; then
    echo "== bench vulkan:0 with the blocked GEMM shader (ACCEL_VULKAN_GEMM=blocked)"
    ACCEL_VULKAN_GEMM=blocked timeout "$STEP" "$BIN/accel" bench vulkan --device vulkan:0 --sizes "${SIZES:-1024,4096,8192}" --reps "${REPS:-10}" --iters 200 || status=1
fi

if part cudabench; then
    echo "== bench cuda (launch overhead, many clients vs a context per process, containment)"
    timeout "$STEP" "$BIN/accel" bench cuda --clients "${CLIENTS:-1,4,16}" --seconds 2 || status=1
fi

if part launch; then
    echo "== bench cuda --launch-only (launch overhead, ${ROUNDS:-10} rounds, and the path's parts)"
    timeout "$STEP" "$BIN/accel" bench cuda --launch-only --rounds "${ROUNDS:-10}" --iters "${ITERS:-1000}" || status=1
fi

if part cudaasync; then
    echo "== cuda tests and bench cuda with ACCEL_CUDA_ASYNC=1 (the asynchronous compute engine)"
    if [ -x "$BIN/cuda-tests" ]; then
        ACCEL_CUDA_ASYNC=1 ACCEL_REQUIRE_CUDA=1 ACCEL_BIN="$PWD/$BIN/accel" timeout "$STEP" "$BIN/cuda-tests" --test-threads 1 || status=1
    fi
    ACCEL_CUDA_ASYNC=1 timeout "$STEP" "$BIN/accel" bench cuda --clients "${CLIENTS:-1,4,16}" --seconds 2 --rounds "${ROUNDS:-5}" --iters "${ITERS:-1000}" || status=1
fi

if part green; then
    echo "== bench cuda-green (green contexts against streams of one context; a fault in one green context)"
    timeout "$STEP" "$BIN/accel" bench cuda-green --threads "${GREEN_THREADS:-4,16}" --seconds 2 || status=1
fi

part torch && echo "== torch.matmul baseline (same GPU)"
part torch && { timeout "$STEP" python3 - <<'PY' || status=1; }
import json, time
try:
    import torch
except ImportError:
    print(json.dumps({"bench": "torch-matmul", "skipped": "no torch"})); raise SystemExit(0)
if not torch.cuda.is_available():
    print(json.dumps({"bench": "torch-matmul", "skipped": "no CUDA device"})); raise SystemExit(0)
torch.backends.cuda.matmul.allow_tf32 = False
# 16-bit matmuls summed in f32 throughout, as accel's cuBLAS handles are set up.
torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
import os
for n in [int(s) for s in os.environ.get('SIZES', '1024,4096,8192').split(',')]:
    # f32 (no TF32), then the 16-bit types the accel bench's gpu-gemm16 lines compare with.
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a = torch.randn(n, n, device="cuda", dtype=dtype); b = torch.randn(n, n, device="cuda", dtype=dtype)
        torch.matmul(a, b); torch.cuda.synchronize()
        ts = []
        for _ in range(int(os.environ.get('REPS', '10'))):
            t = time.perf_counter(); torch.matmul(a, b); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
        ts.sort()
        print(json.dumps({"bench": "torch-matmul", "n": n, "dtype": str(dtype).split('.')[-1],
                          "device": torch.cuda.get_device_name(),
                          "gflops": round(2 * n**3 / ts[len(ts) // 2] / 1e9, 1)}))
PY
# NVIDIA's MPS beside accel and time-slicing (last: MPS must not be running during the others).
if part mps; then
    echo "== bench cuda-mps (MPS against accel and time-slicing; a fault among MPS clients)"
    timeout "$STEP" "$BIN/accel" bench cuda-mps --clients "${CLIENTS:-1,4,16}" --seconds 2 --dir /tmp/accel-mps || status=1
    # Whatever happened to the bench, MPS is told to quit (an error if it already did).
    echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/accel-mps/pipe timeout 10 nvidia-cuda-mps-control >/dev/null 2>&1 || true
fi

exit $status
