#!/usr/bin/env bash
# The GPU check: runs on the lent GPU machine (no Rust toolchain there) from binaries built
# here and carried over, and prints every figure as JSON lines. Build first, here:
#
#   cargo build --release && cargo test --release -p accel-cli --test vulkan --test cuda --no-run
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
    ls -la gpu-bin
    exit 0
fi

BIN=${BIN:-gpu-bin}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if ! ldconfig -p | grep -q libvulkan.so.1 && [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi

echo "== vulkan tests"
if [ -x "$BIN/vulkan-tests" ]; then
    ACCEL_REQUIRE_VULKAN=1 ACCEL_BIN="$PWD/$BIN/accel" "$BIN/vulkan-tests" --test-threads 1 || status=1
else
    echo "no $BIN/vulkan-tests: run scripts/gpu-check.sh --stage after building"; status=1
fi

echo "== cuda tests"
if [ -x "$BIN/cuda-tests" ]; then
    ACCEL_REQUIRE_CUDA=1 ACCEL_BIN="$PWD/$BIN/accel" "$BIN/cuda-tests" --test-threads 1 || status=1
else
    echo "no $BIN/cuda-tests: run scripts/gpu-check.sh --stage after building"; status=1
fi

for dev in vulkan:0 cuda:0; do
    echo "== bench $dev (GEMM f32 against the cpu driver; null launch round trip)"
    "$BIN/accel" bench vulkan --device "$dev" --sizes "${SIZES:-1024,4096}" --reps 5 --iters 2000 || status=1
done

echo "== torch.matmul baseline (same GPU)"
python3 - <<'PY' || status=1
import json, time
try:
    import torch
except ImportError:
    print(json.dumps({"bench": "torch-matmul", "skipped": "no torch"})); raise SystemExit(0)
if not torch.cuda.is_available():
    print(json.dumps({"bench": "torch-matmul", "skipped": "no CUDA device"})); raise SystemExit(0)
torch.backends.cuda.matmul.allow_tf32 = False
import os
for n in [int(s) for s in os.environ.get('SIZES', '1024,4096').split(',')]:
    a = torch.randn(n, n, device="cuda"); b = torch.randn(n, n, device="cuda")
    torch.matmul(a, b); torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); torch.matmul(a, b); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    ts.sort()
    print(json.dumps({"bench": "torch-matmul", "n": n, "device": torch.cuda.get_device_name(),
                      "gflops": round(2 * n**3 / ts[len(ts) // 2] / 1e9, 1)}))
PY
exit $status
