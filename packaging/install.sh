#!/bin/sh
# Install fitchat with the llama.cpp backend this machine can use.
#
#   CUDA   when an NVIDIA GPU (nvidia-smi) and a CUDA toolkit (nvcc) are present
#   Metal  on Apple Silicon
#   CPU    otherwise
#
# fitchat goes into its own environment, made with pipx, uv tool or a plain venv (the first one
# found, or --method). Running it again changes nothing that is already right: it checks the
# installed llama.cpp build with fitchat's own hardware detection and rebuilds llama-cpp-python
# only when the backend is wrong. Every command it runs is printed; --dry-run prints the plan and
# runs nothing.
#
# --rpc adds llama.cpp's RPC backend (-DGGML_RPC=ON), which 'fitchat worker' and --rpc need to lend and
# borrow other machines' memory; an installed build without it is rebuilt.
#
# Usage: sh install.sh [--backend auto|cuda|metal|cpu] [--rpc] [--method auto|pipx|uv|venv]
#                      [--prefix DIR] [--source SPEC] [--python PYTHON]
#                      [--find-links DIR] [--no-index] [--upgrade] [--rebuild] [--dry-run]
#                      [--check-model FILE.gguf] [--no-smoke]
#
# After the build it checks that llama.cpp really runs here: a smoke decode in a child process
# (python -m fitchat.llama.smoke, with the starter model or --check-model). When the native build
# crashes (say SIGILL in its AMX kernels under a hypervisor), it rebuilds once with a portable flag set
# (GGML_NATIVE off, this CPU's AVX/AVX-512 extensions named one by one: python -m fitchat.llama.smoke
# --cmake-args) and checks again.
set -eu

BACKEND=auto
METHOD=auto
PREFIX=
SOURCE=
PYTHON=
FIND_LINKS=
NO_INDEX=0
UPGRADE=0
REBUILD=0
DRY_RUN=0
SMOKE=1
RPC=0
CHECK_MODEL=
DONE=
CUDA_SEARCH=${FITCHAT_CUDA_SEARCH-/usr/local/cuda /opt/cuda}

say() { printf 'fitchat-install: %s\n' "$*"; }
die() { printf 'fitchat-install: error: %s\n' "$*" >&2; exit 1; }
did() { DONE="${DONE}  - $*
"; say "$*"; }

usage() {
    cat <<'EOF'
Install fitchat with the llama.cpp backend this machine can use (CUDA, Metal or CPU).

  --backend B     auto (default), cuda, metal or cpu
  --rpc           also build llama.cpp's RPC backend (-DGGML_RPC=ON) for 'fitchat worker' and --rpc
  --method M      auto (default: pipx, else uv, else venv), pipx, uv or venv
  --prefix DIR    install under DIR: the venv in DIR/share/fitchat/venv and the command in DIR/bin
                  (default ~/.local); with pipx or uv, their homes go under DIR too
  --source SPEC   what to install: a wheel, a source folder or a requirement
                  (default: this checkout when run from one, else "fitchat")
  --python PY     the Python (3.10 or newer) to build the environment with
  --find-links D  also look for packages in folder D (a wheelhouse for offline installs)
  --no-index      do not use the package index (with --find-links)
  --upgrade       reinstall fitchat even when it is already installed
  --rebuild       rebuild llama-cpp-python even when its backend is already right
  --dry-run       print what would be done, change nothing
  --check-model F the GGUF the smoke decode loads when the starter model is not downloaded
  --no-smoke      skip the smoke decode that checks the build runs on this CPU
  -h, --help      this text

Extra CMake options can be passed in CMAKE_ARGS (e.g. CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=89).
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --backend) [ $# -ge 2 ] || die "--backend needs a value"; BACKEND=$2; shift 2 ;;
        --backend=*) BACKEND=${1#*=}; shift ;;
        --method) [ $# -ge 2 ] || die "--method needs a value"; METHOD=$2; shift 2 ;;
        --method=*) METHOD=${1#*=}; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --source) [ $# -ge 2 ] || die "--source needs a value"; SOURCE=$2; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a value"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --find-links) [ $# -ge 2 ] || die "--find-links needs a value"; FIND_LINKS=$2; shift 2 ;;
        --find-links=*) FIND_LINKS=${1#*=}; shift ;;
        --no-index) NO_INDEX=1; shift ;;
        --upgrade) UPGRADE=1; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --rpc) RPC=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --check-model) [ $# -ge 2 ] || die "--check-model needs a value"; CHECK_MODEL=$2; shift 2 ;;
        --check-model=*) CHECK_MODEL=${1#*=}; shift ;;
        --no-smoke) SMOKE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

case $BACKEND in auto|cuda|metal|cpu) ;; *) die "--backend must be auto, cuda, metal or cpu, not '$BACKEND'" ;; esac
case $METHOD in auto|pipx|uv|venv) ;; *) die "--method must be auto, pipx, uv or venv, not '$METHOD'" ;; esac
[ -z "$CHECK_MODEL" ] || [ -f "$CHECK_MODEL" ] || die "--check-model: no such file: $CHECK_MODEL"
[ -z "$FIND_LINKS" ] || [ -d "$FIND_LINKS" ] || die "--find-links: no such folder: $FIND_LINKS"
[ "$NO_INDEX" = 0 ] || [ -n "$FIND_LINKS" ] || die "--no-index needs --find-links (where else would packages come from?)"

# The arguments as a shell would read them back: one with a space, a quote, '$' or the like in single quotes,
# so a printed command (a path with a space, a CMAKE_ARGS from the environment) pastes as what runs.
shown() {
    _shown=
    for _arg in "$@"; do
        case $_arg in
            ''|*[!A-Za-z0-9_./:=@%+,-]*) _arg="'$(printf '%s' "$_arg" | sed "s/'/'\\\\''/g")'" ;;
        esac
        _shown="${_shown:+$_shown }$_arg"
    done
    printf '%s' "$_shown"
}

# Print a command, then run it (or only print it in a dry run).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '  would run: %s\n' "$(shown "$@")"
    else
        printf '  + %s\n' "$(shown "$@")"
        "$@"
    fi
}

# --------------------------------------------------------------------------- the machine

OS=$(uname -s)
ARCH=$(uname -m)

GPU_NAMES=
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU_NAMES=$(nvidia-smi -L 2>/dev/null | sed -n 's/^GPU [0-9]*: \(.*\) (UUID.*/\1/p' | paste -sd, - || true)
fi

NVCC=
if command -v nvcc >/dev/null 2>&1; then
    NVCC=$(command -v nvcc)
else
    for home in ${CUDA_HOME:-} ${CUDA_PATH:-} $CUDA_SEARCH; do
        if [ -x "$home/bin/nvcc" ]; then NVCC=$home/bin/nvcc; break; fi
    done
fi
CUDA_RELEASE=
if [ -n "$NVCC" ]; then
    CUDA_RELEASE=$("$NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p' | head -n1)
fi

APPLE_SILICON=0
if [ "$OS" = Darwin ]; then
    if [ "$ARCH" = arm64 ] || [ "$(sysctl -n hw.optional.arm64 2>/dev/null || echo 0)" = 1 ]; then
        APPLE_SILICON=1
    fi
fi

say "machine: $OS $ARCH"
say "NVIDIA GPU: ${GPU_NAMES:-none found (no nvidia-smi, or it lists no GPU)}"
if [ -n "$NVCC" ]; then
    say "CUDA toolkit: ${CUDA_RELEASE:-unknown release} ($NVCC)"
else
    say "CUDA toolkit: none (no nvcc on PATH, in CUDA_HOME or in $CUDA_SEARCH)"
fi

REASON=
if [ "$BACKEND" = auto ]; then
    if [ -n "$GPU_NAMES" ] && [ -n "$NVCC" ]; then
        BACKEND=cuda; REASON="NVIDIA GPU and CUDA toolkit found"
    elif [ "$APPLE_SILICON" = 1 ]; then
        BACKEND=metal; REASON="Apple Silicon"
    elif [ -n "$GPU_NAMES" ]; then
        BACKEND=cpu
        REASON="NVIDIA GPU found but no CUDA toolkit: install one (nvcc), then run this again for a CUDA build"
    elif [ -n "$NVCC" ]; then
        BACKEND=cpu; REASON="CUDA toolkit found but no NVIDIA GPU (pass --backend cuda to build for CUDA anyway)"
    else
        BACKEND=cpu; REASON="no GPU that llama.cpp can use"
    fi
else
    REASON="chosen with --backend"
fi
say "backend: $BACKEND ($REASON)"

case $BACKEND in
    cuda) BACKEND_ARGS=-DGGML_CUDA=on ;;
    metal) BACKEND_ARGS=-DGGML_METAL=on ;;
    *) BACKEND_ARGS= ;;
esac
if [ "$RPC" = 1 ]; then
    BACKEND_ARGS=$(printf '%s %s' "$BACKEND_ARGS" -DGGML_RPC=ON | sed 's/^ *//')
    say "with llama.cpp's RPC backend (--rpc): workers have no authentication, keep them on a private network"
fi
USER_CMAKE_ARGS=${CMAKE_ARGS:-}  # what the user passed, kept apart from the flags each build sets
BUILD_ARGS=$(printf '%s %s' "$BACKEND_ARGS" "$USER_CMAKE_ARGS" | sed 's/^ *//; s/ *$//')
JOBS=$( (getconf _NPROCESSORS_ONLN || sysctl -n hw.ncpu || echo 2) 2>/dev/null | head -n1)
CUDA_ENV=0
if [ "$BACKEND" = cuda ] && [ -n "$NVCC" ] && ! command -v nvcc >/dev/null 2>&1; then
    CUDA_ENV=1  # nvcc came from CUDA_HOME or a default folder: show CMake where it is
fi
# What is shown in front of a build command: CMAKE_ARGS (recomputed when the build flags change), then the rest.
BUILD_SHOW_REST=
[ "$CUDA_ENV" = 0 ] || BUILD_SHOW_REST="CUDACXX=$NVCC "
show_build() {
    BUILD_SHOW=
    # In double quotes as before, with what is special inside them escaped: it pastes as what runs.
    [ -z "$BUILD_ARGS" ] || BUILD_SHOW="CMAKE_ARGS=\"$(printf '%s' "$BUILD_ARGS" | sed 's/[\\"$`]/\\&/g')\" "
    BUILD_SHOW="$BUILD_SHOW$BUILD_SHOW_REST"
}
show_build

if [ "$BACKEND" = cuda ] && [ -z "$NVCC" ]; then
    die "a CUDA build needs the CUDA toolkit (nvcc): install it (https://developer.nvidia.com/cuda-downloads), put its bin/ on PATH, then run this again"
fi

# --------------------------------------------------------------------------- Python and the source

if [ -z "$PYTHON" ]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$("$candidate" -c "import sys; print(sys.executable)"); break; fi
    done
fi
[ -n "$PYTHON" ] || die "no Python found: install Python 3.10 or newer (or pass --python)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "$PYTHON is not Python 3.10 or newer: install one, or pass --python"
if [ "$APPLE_SILICON" = 1 ] && [ "$("$PYTHON" -c 'import platform; print(platform.system(), platform.machine())')" = "Darwin x86_64" ]; then
    die "$PYTHON is an x86_64 build running under Rosetta, which cannot use Metal: use an arm64 Python (--python /opt/homebrew/bin/python3)"
fi
say "python: $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"

HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "$SOURCE" ]; then
    if [ -f "$HERE/../pyproject.toml" ] && grep -q '^name = "fitchat"' "$HERE/../pyproject.toml"; then
        SOURCE=$(cd "$HERE/.." && pwd)
    else
        SOURCE=fitchat
    fi
fi
say "source: $SOURCE"

if [ -z "$FIND_LINKS" ] && ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1 && ! command -v clang >/dev/null 2>&1; then
    if [ "$OS" = Darwin ]; then fix="xcode-select --install"; else fix="sudo apt install build-essential (or your distribution's C/C++ compiler)"; fi
    die "llama-cpp-python is built from source and needs a C/C++ compiler: $fix"
fi

# pip and uv read these from the environment (shown in front of each command that uses them).
if [ -n "$FIND_LINKS" ]; then
    FIND_LINKS=$(cd "$FIND_LINKS" && pwd)
    BUILD_SHOW_REST="${BUILD_SHOW_REST}PIP_FIND_LINKS=$FIND_LINKS "
fi
[ "$NO_INDEX" = 0 ] || BUILD_SHOW_REST="${BUILD_SHOW_REST}PIP_NO_INDEX=1 "
show_build

# --------------------------------------------------------------------------- pipx, uv or venv

if [ "$METHOD" = auto ]; then
    if command -v pipx >/dev/null 2>&1; then METHOD=pipx
    elif command -v uv >/dev/null 2>&1; then METHOD=uv
    else METHOD=venv
    fi
fi
case $METHOD in
    pipx) command -v pipx >/dev/null 2>&1 || die "pipx is not installed: 'python3 -m pip install --user pipx', or use --method venv" ;;
    uv) command -v uv >/dev/null 2>&1 || die "uv is not installed: 'python3 -m pip install --user uv', or use --method venv" ;;
esac

PREFIX=${PREFIX:-$HOME/.local}
BIN_DIR=$PREFIX/bin
if [ "$PREFIX" != "$HOME/.local" ]; then
    # Keep pipx's and uv's own homes under the chosen prefix too.
    export PIPX_HOME="$PREFIX/share/pipx" PIPX_BIN_DIR="$BIN_DIR" PIPX_MAN_DIR="$PREFIX/share/man"
    export UV_TOOL_DIR="$PREFIX/share/uv/tools" UV_TOOL_BIN_DIR="$BIN_DIR"
fi

case $METHOD in
    pipx)
        ENV_DIR=${PIPX_HOME:-$(pipx environment --value PIPX_HOME 2>/dev/null || echo "$HOME/.local/share/pipx")}/venvs/fitchat
        ;;
    uv)
        ENV_DIR=${UV_TOOL_DIR:-$(uv tool dir 2>/dev/null)}/fitchat
        ;;
    venv)
        ENV_DIR=${FITCHAT_VENV:-$PREFIX/share/fitchat/venv}
        ;;
esac
ENV_PY=$ENV_DIR/bin/python
say "method: $METHOD (environment: $ENV_DIR; command: $BIN_DIR/fitchat)"

# What the environment holds now: "<fitchat version or ->" and "<backend> <llama-cpp-python version>".
fitchat_version() {
    [ -x "$ENV_PY" ] || { echo -; return; }
    "$ENV_PY" -c 'import importlib.metadata as m
try:
    import fitchat.cli.main
    print(m.version("fitchat"))
except Exception:
    print("-")' 2>/dev/null || echo -
}
llama_backend() {
    [ -x "$ENV_PY" ] || { echo "missing -"; return; }
    "$ENV_PY" - <<'EOF' 2>/dev/null || echo "broken -"
from fitchat.model.hardware import probe_llama_build
b = probe_llama_build()
if b.error:
    state = "missing" if b.version == "not installed" else "broken"
elif b.has_device("CUDA"):
    state = "cuda"
elif b.has_device("Metal") or b.has_device("MTL"):
    state = "metal"
else:
    state = "cpu"
try:
    from fitchat.llama.rpc import rpc_available
    if rpc_available():
        state += "+rpc"
except Exception:
    pass
print(state, b.version)
EOF
}

# Run a command in the build environment: the backend's CMake flags, all cores, and nvcc where CMake finds it.
build_run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '  would run: %s%s\n' "$BUILD_SHOW" "$(shown "$@")"
        return
    fi
    printf '  + %s%s\n' "$BUILD_SHOW" "$(shown "$@")"
    (
        export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
        if [ -n "$BUILD_ARGS" ]; then export CMAKE_ARGS="$BUILD_ARGS"; else unset CMAKE_ARGS; fi
        if [ "$CUDA_ENV" = 1 ]; then
            # shellcheck disable=SC2030
            CUDACXX=$NVCC PATH="$(dirname "$NVCC"):$PATH"
            export CUDACXX PATH
        fi
        if [ -n "$FIND_LINKS" ]; then
            export PIP_FIND_LINKS="$FIND_LINKS" UV_FIND_LINKS="$FIND_LINKS"
        fi
        if [ "$NO_INDEX" = 1 ]; then
            export PIP_NO_INDEX=1 UV_NO_INDEX=1
        fi
        "$@"
    )
}

# --------------------------------------------------------------------------- 1. fitchat itself

INSTALLED=$(fitchat_version)
if [ "$INSTALLED" != - ] && [ "$UPGRADE" = 0 ]; then
    say "fitchat $INSTALLED is already installed in $ENV_DIR (--upgrade reinstalls it)"
else
    [ "$INSTALLED" = - ] || say "reinstalling fitchat $INSTALLED (--upgrade)"
    case $METHOD in
        pipx)
            force=; [ "$INSTALLED" = - ] || force=--force
            build_run pipx install $force --python "$PYTHON" "$SOURCE"
            ;;
        uv)
            force=; [ "$INSTALLED" = - ] || force=--reinstall-package=fitchat
            build_run uv tool install $force --python "$PYTHON" "$SOURCE"
            ;;
        venv)
            if [ ! -x "$ENV_PY" ]; then
                run "$PYTHON" -m venv "$ENV_DIR"
                [ "$DRY_RUN" = 1 ] || did "created the virtual environment $ENV_DIR"
            fi
            build_run "$ENV_PY" -m pip install --disable-pip-version-check --quiet "$SOURCE"
            ;;
    esac
    [ "$DRY_RUN" = 1 ] || did "installed fitchat $(fitchat_version) with $METHOD"
fi

# --------------------------------------------------------------------------- 2. the llama.cpp backend

rebuild() {
    version=$1
    req=llama-cpp-python
    case $version in [0-9]*) req="llama-cpp-python==$version" ;; esac
    case $METHOD in
        pipx) build_run pipx runpip fitchat install --force-reinstall --no-cache-dir --no-deps "$req" ;;
        uv) build_run uv pip install --python "$ENV_PY" --reinstall --no-cache --no-deps "$req" ;;
        venv) build_run "$ENV_PY" -m pip install --disable-pip-version-check --quiet --force-reinstall --no-cache-dir --no-deps "$req" ;;
    esac
}

if [ "$DRY_RUN" = 1 ] && [ ! -x "$ENV_PY" ]; then
    say "would check the llama.cpp build with fitchat's detection, and rebuild llama-cpp-python for $BACKEND if it differs"
else
    state=$(llama_backend)
    HAVE=${state%% *} LLAMA_VERSION=${state#* }
    HAVE_RPC=0
    case $HAVE in *+rpc) HAVE_RPC=1; HAVE=${HAVE%+rpc} ;; esac
    if [ "$HAVE" = "$BACKEND" ] && [ "$RPC" = 1 ] && [ "$HAVE_RPC" = 0 ] && [ "$REBUILD" = 0 ]; then
        say "llama-cpp-python $LLAMA_VERSION has the $BACKEND backend but no RPC: rebuilding it with RPC (--rpc)"
        rebuild "$LLAMA_VERSION"
        if [ "$DRY_RUN" = 0 ]; then
            state=$(llama_backend)
            case ${state%% *} in *+rpc) ;; *) die "llama-cpp-python was rebuilt but has no RPC backend: check the build output above" ;; esac
            did "rebuilt llama-cpp-python ${state#* } with the $BACKEND backend and RPC"
        fi
    elif [ "$HAVE" = "$BACKEND" ] && [ "$REBUILD" = 0 ]; then
        say "llama-cpp-python $LLAMA_VERSION already has the $BACKEND backend"
    else
        if [ "$REBUILD" = 1 ]; then
            say "rebuilding llama-cpp-python $LLAMA_VERSION for $BACKEND (--rebuild)"
        else
            say "llama-cpp-python $LLAMA_VERSION has the $HAVE backend, $BACKEND is wanted: rebuilding it (this takes a few minutes)"
        fi
        rebuild "$LLAMA_VERSION"
        if [ "$DRY_RUN" = 0 ]; then
            state=$(llama_backend)
            [ "${state%% *}" = "$BACKEND" ] || [ "${state%% *}" = "$BACKEND+rpc" ] || die "llama-cpp-python was rebuilt but its backend is '${state%% *}', not '$BACKEND': check the build output above (for CUDA: nvcc on PATH and a driver that supports it; 'fitchat doctor' says more)"
            did "rebuilt llama-cpp-python ${state#* } with the $BACKEND backend"
        fi
    fi
fi

# --------------------------------------------------------------------------- 2b. does the build run here?

# A smoke decode in a child process; prints one line, exit status 0 ok, 2 crashed natively but runs without
# extra buffer types, 4 crashed both ways, 1 failed, 3 skipped (no model on disk to decode with).
smoke_check() {
    set -- "$ENV_PY" -m fitchat.llama.smoke "$@"
    [ -z "$CHECK_MODEL" ] || set -- "$@" --model "$CHECK_MODEL"
    say "smoke decode: $*"
    SMOKE_OUT=$("$@" 2>&1) && SMOKE_RC=0 || SMOKE_RC=$?
    printf '%s\n' "$SMOKE_OUT" | sed 's/^/    /'
}

if [ "$SMOKE" = 0 ]; then
    say "smoke decode skipped (--no-smoke)"
elif [ "$DRY_RUN" = 1 ]; then
    say "would check that the build runs here: $ENV_PY -m fitchat.llama.smoke (a smoke decode in a child process); if the native build crashes, rebuild llama-cpp-python once with portable flags (GGML_NATIVE=OFF and this CPU's extensions, from: $ENV_PY -m fitchat.llama.smoke --cmake-args) and check again"
else
    say "checking that the llama.cpp build runs on this CPU (smoke decode)"
    smoke_check
    if [ "$SMOKE_RC" = 2 ] || [ "$SMOKE_RC" = 4 ]; then
        PORTABLE=$("$ENV_PY" -m fitchat.llama.smoke --cmake-args) || die "could not work out the portable build flags"
        say "the native build crashed here: rebuilding llama-cpp-python once with portable flags ($PORTABLE)"
        BUILD_ARGS=$(printf '%s %s %s' "$BACKEND_ARGS" "$USER_CMAKE_ARGS" "$PORTABLE" | sed 's/^ *//; s/ *$//; s/  */ /g')
        show_build
        rebuild "$LLAMA_VERSION"
        did "rebuilt llama-cpp-python with portable flags ($PORTABLE) because the native build crashed here"
        smoke_check --recheck
        case $SMOKE_RC in
            0) did "the portable build passes the smoke decode" ;;
            2) did "the portable build still crashes with extra buffer types: fitchat loads without them (slower prompt processing)" ;;
            *) die "the portable build does not run here either ('fitchat doctor' says more)" ;;
        esac
    else
        case $SMOKE_RC in
            0) say "the build passes the smoke decode" ;;
            3) say "no model on disk to decode with yet: the check runs before the first load (or pass --check-model FILE.gguf; 'fitchat doctor' runs it too)" ;;
            *) say "the smoke decode did not finish (see above); 'fitchat doctor' runs it again" ;;
        esac
    fi
fi

# --------------------------------------------------------------------------- 3. the fitchat command

if [ "$METHOD" = venv ]; then
    if [ "$(readlink "$BIN_DIR/fitchat" 2>/dev/null || true)" = "$ENV_DIR/bin/fitchat" ]; then
        say "$BIN_DIR/fitchat already points to $ENV_DIR/bin/fitchat"
    else
        [ -d "$BIN_DIR" ] || run mkdir -p "$BIN_DIR"
        run ln -sf "$ENV_DIR/bin/fitchat" "$BIN_DIR/fitchat"
        [ "$DRY_RUN" = 1 ] || did "linked $BIN_DIR/fitchat"
    fi
fi
# shellcheck disable=SC2031
case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) say "note: $BIN_DIR is not on PATH; add it: export PATH=\"$BIN_DIR:\$PATH\"" ;;
esac

if [ "$DRY_RUN" = 1 ]; then
    say "dry run: nothing was changed"
elif [ -z "$DONE" ]; then
    say "nothing to do: fitchat is installed with the $BACKEND backend"
else
    say "done; what changed:"
    printf '%s' "$DONE"
    say "next: fitchat doctor"
fi
