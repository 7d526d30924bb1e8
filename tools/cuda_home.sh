#!/usr/bin/env sh
# Prints the CUDA toolkit folder of the nvcc on PATH, or nothing.
# nvcc may be a small wrapper script (`exec /usr/local/cuda-X/bin/nvcc "$@"`);
# torch would then guess the wrapper's folder and fail to link, so read it.
nvcc_path=$(command -v nvcc 2>/dev/null) || exit 0
real=$(sed -n 's|^exec \([^ ]*/bin/nvcc\).*|\1|p' "$nvcc_path" 2>/dev/null | head -n 1)
[ -n "$real" ] || real=$(readlink -f "$nvcc_path")
dirname "$(dirname "$real")"
