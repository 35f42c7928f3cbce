#!/usr/bin/env bash
# Build the CUDA libraries (libllama, libggml*) of the same llama.cpp as the installed llama-cpp-python,
# on a machine with nvcc and no GPU, into a folder to carry to the GPU machine, where
#     LLAMA_CPP_LIB_PATH=<out>/bin python bench/gpu_calibrate.py
# runs fitchat's calibration against llama.cpp's CUDA buffers.
#
#   bench/cuda_build.sh [--dry-run] [--configure-only] [--out DIR] [--arch 90] [--jobs N] [--sdist FILE] [--cublas-from-pip]
#
# --dry-run        print the commands, run none of them
# --configure-only stop after CMake's configure step (seconds: checks the toolkit, cuBLAS and the flags)
# --out DIR        where bin/ (the libraries) goes (default: ./llama-cuda-<version>)
# --arch N         CUDA architecture(s) for CMAKE_CUDA_ARCHITECTURES (default 90: H100/H200)
# --jobs N         parallel compile jobs (default: all cores)
# --sdist FILE     the llama-cpp-python sdist to take llama.cpp from (default: pip download of the installed version)
# --cublas-from-pip
#                  the toolkit has no cuBLAS (ggml-cuda needs it): take it from PyPI's nvidia-cublas wheel and put
#                  libcublas/libcublasLt beside the libraries in bin/ (chosen by itself when cublas_v2.h is missing;
#                  they add about 0.6 GB to the folder: CUDA 13.0's libcublasLt alone is 551 MB)
#
# PYTHON (default python3) is the interpreter whose llama-cpp-python version is matched.
set -eu

PYTHON=${PYTHON:-python3}
DRY=0
OUT=""
ARCH=90
JOBS=""
SDIST=""
CUBLAS_PIP=0
CONFIGURE_ONLY=0

die() { echo "cuda_build.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --configure-only) CONFIGURE_ONLY=1 ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift ;;
        --arch) [ $# -ge 2 ] || die "--arch needs a value such as 90"; ARCH=$2; shift ;;
        --jobs) [ $# -ge 2 ] || die "--jobs needs a number"; JOBS=$2; shift ;;
        --sdist) [ $# -ge 2 ] || die "--sdist needs a file"; SDIST=$2; shift ;;
        --cublas-from-pip) CUBLAS_PIP=1 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

case "$ARCH" in
    *[!0-9\;a-z-]*|"") die "--arch takes CUDA architectures such as 90 or 89;90, not '$ARCH'" ;;
esac
case "$JOBS" in
    "") JOBS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2) ;;
    *[!0-9]*) die "--jobs takes a number, not '$JOBS'" ;;
esac

# Print a command; run it unless this is a dry run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    [ "$DRY" -eq 1 ] || "$@"
}

VERSION=$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null) \
    || die "llama-cpp-python is not installed for $PYTHON (set PYTHON to the interpreter fitchat runs on)"
OUT=${OUT:-$PWD/llama-cuda-$VERSION}
# An absolute folder: a relative one that starts with '-' would reach mkdir, pip and tar as an option.
case "$OUT" in /*) ;; *) OUT=$PWD/$OUT ;; esac
WORK=${OUT}.work

if NVCC=$(command -v nvcc 2>/dev/null) || { [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc; }; then
    CUDA_VERSION=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    echo "nvcc: $NVCC (CUDA $CUDA_VERSION)"
else
    [ "$DRY" -eq 1 ] || die "no nvcc: install the CUDA toolkit (or put its bin/ on PATH) first"
    NVCC=nvcc
    CUDA_VERSION=13.0
    echo "nvcc: not found (dry run goes on as for CUDA $CUDA_VERSION)"
fi
CUDA_MAJOR=${CUDA_VERSION%%.*}
# The toolkit's root: CUDA_HOME/CUDA_PATH, else nvcc's parent folder, else /usr/local/cuda (nvcc on PATH can be a wrapper).
CUDA_ROOT=${CUDA_HOME:-${CUDA_PATH:-}}
if [ -z "$CUDA_ROOT" ]; then
    CUDA_ROOT=$(cd "$(dirname "$(readlink -f "$NVCC" 2>/dev/null || echo "$NVCC")")/.." 2>/dev/null && pwd || echo /usr/local/cuda)
    [ -f "$CUDA_ROOT/include/cuda_runtime.h" ] || CUDA_ROOT=/usr/local/cuda
fi
[ ! -x "$CUDA_ROOT/bin/nvcc" ] || NVCC=$CUDA_ROOT/bin/nvcc
if [ ! -f "$CUDA_ROOT/include/cublas_v2.h" ] && [ "$CUBLAS_PIP" -eq 0 ]; then
    echo "cuBLAS: not in $CUDA_ROOT (ggml-cuda needs it): taking it from PyPI's nvidia-cublas"
    CUBLAS_PIP=1
fi
echo "llama-cpp-python $VERSION: building its llama.cpp for CUDA architecture(s) $ARCH with $JOBS jobs into $OUT"

SRC=$WORK/llama.cpp
BUILD=$WORK/build
run mkdir -p "$WORK" "$SRC" "$OUT/bin"
if [ -z "$SDIST" ]; then
    run "$PYTHON" -m pip download --no-deps --no-binary :all: --quiet -d "$WORK" "llama-cpp-python==$VERSION"
    SDIST=$WORK/llama_cpp_python-$VERSION.tar.gz
fi
# Only what the libraries need (the sdist's llama.cpp, trimmed: no tools, tests or examples).
TOP=llama_cpp_python-$VERSION/vendor/llama.cpp
run tar -xzf "$SDIST" -C "$SRC" --strip-components=3 \
    "$TOP/CMakeLists.txt" "$TOP/cmake" "$TOP/ggml" "$TOP/src" "$TOP/include" "$TOP/common" "$TOP/vendor" \
    "$TOP/licenses" "$TOP/LICENSE"

# ggml-cuda links the driver (libcuda) for its VMM memory pool; a machine without a GPU often has neither the
# driver nor the toolkit's stub of it. Without VMM the pool is the plain one; the buffers llama.cpp sizes are the same.
VMM_ARGS=()
if ! ls "$CUDA_ROOT"/lib64/stubs/libcuda.so "$CUDA_ROOT"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1 \
    && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
    echo "libcuda: neither the driver nor the toolkit's stub is here: building without VMM (-DGGML_CUDA_NO_VMM=ON)"
    VMM_ARGS=(-DGGML_CUDA_NO_VMM=ON)
fi

# Arrays, not strings: a folder with spaces, '*' or ';' in its name stays one argument each.
CUBLAS_ARGS=()
if [ "$CUBLAS_PIP" -eq 1 ]; then
    if [ "$CUDA_MAJOR" -ge 13 ]; then CUBLAS_PKG="nvidia-cublas==$CUDA_MAJOR.*"; else CUBLAS_PKG="nvidia-cublas-cu$CUDA_MAJOR"; fi
    run "$PYTHON" -m pip install --quiet --no-deps --target "$WORK/cublas" "$CUBLAS_PKG"
    CUBLAS_LIB=$(find "$WORK/cublas" -name "libcublas.so.$CUDA_MAJOR" 2>/dev/null | head -n 1)
    CUBLAS_LIB=${CUBLAS_LIB:-$WORK/cublas/nvidia/cu$CUDA_MAJOR/lib/libcublas.so.$CUDA_MAJOR}
    CUBLAS_DIR=$(dirname "$CUBLAS_LIB")
    CUBLAS_INCLUDE=$(dirname "$CUBLAS_DIR")/include
    CUBLAS_ARGS=("-DCUDA_cublas_LIBRARY=$CUBLAS_LIB" "-DCUDA_cublasLt_LIBRARY=$CUBLAS_DIR/libcublasLt.so.$CUDA_MAJOR"
                 "-DCMAKE_CUDA_FLAGS=-I$CUBLAS_INCLUDE" "-DCMAKE_CXX_FLAGS=-I$CUBLAS_INCLUDE")
fi

# Shared libraries that find each other where they are carried ($ORIGIN), portable CPU code (the GPU machine's
# CPU is not this one's: -march=native could die there with SIGILL), one CUDA architecture, nothing else built.
# shellcheck disable=SC2016 # $ORIGIN is for the linker, not the shell
run cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" "-DCMAKE_CUDA_COMPILER=$NVCC" ${VMM_ARGS[@]+"${VMM_ARGS[@]}"} ${CUBLAS_ARGS[@]+"${CUBLAS_ARGS[@]}"}
if [ "$CONFIGURE_ONLY" -eq 1 ]; then
    echo "configured in $BUILD; stopping there (--configure-only)"
    exit 0
fi
run cmake --build "$BUILD" --target llama -j "$JOBS"
run sh -c 'cp -P "$1"/bin/lib*.so* "$2"/bin/' copy "$BUILD" "$OUT"
# The CUDA runtime goes along (small); the GPU machine needs only the NVIDIA driver.
run sh -c 'cp -P "$1"/lib64/libcudart.so.* "$2"/bin/' copy "$CUDA_ROOT" "$OUT"
if [ "$CUBLAS_PIP" -eq 1 ]; then
    run sh -c 'cp -P "$1"/libcublas.so.* "$1"/libcublasLt.so.* "$2"/bin/' copy "$CUBLAS_DIR" "$OUT"
fi

[ "$DRY" -eq 0 ] || echo "dry run: nothing was built"
# The command to paste is shell-quoted: a folder named with ';' or '$(…)' stays a folder name there.
cat <<EOF

Carry $(printf '%q' "$OUT") to the machine with the NVIDIA GPU (its driver must support CUDA $CUDA_MAJOR), then, in a fitchat checkout there:
    LLAMA_CPP_LIB_PATH=$(printf '%q' "$OUT/bin") python bench/gpu_calibrate.py
(add --json for the rows as JSON; the build folder $(printf '%q' "$WORK") can be deleted)
EOF
