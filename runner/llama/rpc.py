"""llama.cpp's RPC backend (ggml-rpc): the one place fitchat talks to it.

Other machines lend their memory and compute through ``fitchat worker`` (llama.cpp's RPC server); the
machine that loads a model registers each worker's devices and llama.cpp places layers on them as on
local GPUs. Everything here goes through ctypes into ``libggml-rpc`` (llama-cpp-python wraps none of it):

- whether this build has RPC at all (built with ``-DGGML_RPC=ON``; the default build has no libggml-rpc),
  and the one line that says how to get one that has (:data:`RPC_FIX`);
- ``HOST:PORT[,…]`` read and checked (:func:`parse_endpoints`);
- each worker's devices with free/total memory as llama.cpp sees them (:func:`query_workers`);
- registering the workers' devices for a load (:func:`register`) and the server side (:func:`start_server`).

Why the care around connecting: ggml-rpc *aborts the process* when it cannot connect or a worker stops
answering (``GGML_ABORT("Failed to connect to …")``, ``RPC_STATUS_ASSERT``), and a worker serves one
client at a time, so a second client's handshake waits without end. So the port is first probed with a
short timeout (:func:`probe`), and the device query runs in a child process with a deadline; only the
engine process (itself a child, fitchat.llama.process) ever connects in-process, after both checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitchat.errors import FitchatError, LoadFailed
from fitchat.model.hardware import BackendDevice, ggml_device_api, ggml_device_handles

if TYPE_CHECKING:
    from fitchat.model.hardware import HardwareInfo, RpcDevice

#: How to get a build with RPC, said wherever its absence stops something.
RPC_FIX = (
    "this llama-cpp-python was built without RPC; rebuild it with 'packaging/install.sh --rpc' or "
    "CMAKE_ARGS=\"-DGGML_RPC=ON\" pip install --force-reinstall --no-cache-dir llama-cpp-python"
)
#: The port llama.cpp's rpc-server listens on by default, and so ``fitchat worker``.
DEFAULT_PORT = 50052
#: ggml-rpc's GGML_RPC_MAX_SERVERS.
MAX_WORKERS = 16
#: Seconds a TCP probe of a worker's port may take.
PROBE_TIMEOUT_S = 3.0
#: Seconds the device query (connect, handshake, device count and memory) may take in its child.
QUERY_TIMEOUT_S = 20.0

_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
#: A DNS label (what the resolver takes: 1 to 63 characters; ``a..b`` and 64-character labels it refuses).
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
#: A port as typed: ASCII digits only ('²' and '٥' pass str.isdigit but are no port), at most 5 of them
#: after leading zeros.
_PORT_RE = re.compile(r"^0*[0-9]{1,5}$")
#: The most devices one worker may claim: a machine has a handful; ggml-rpc would make one object per
#: claimed device (2^32 of them from a lying worker) before fitchat sees the count.
MAX_WORKER_DEVICES = 64
#: ggml-rpc's wire format for the commands the device query checks first (ggml-rpc.cpp, protocol 7).
RPC_PROTO_MAJOR = 7
_CMD_HELLO, _CMD_DEVICE_COUNT, _CONN_CAPS = 14, 15, 24


class RpcUnavailable(FitchatError):
    """The installed llama.cpp has no RPC backend."""


class BadEndpoint(FitchatError):
    """A ``--rpc`` value that is not ``HOST:PORT[,HOST:PORT…]``."""

    exit_code = 2


class WorkerUnreachable(LoadFailed):
    """A worker that cannot be reached or does not answer; ``endpoint`` names it."""

    def __init__(self, endpoint: str, why: str) -> None:
        super().__init__(f"worker {endpoint} {why}")
        self.endpoint = endpoint


# --------------------------------------------------------------------------- the build


def library_path() -> Path | None:
    """Where this build's libggml-rpc is (None when it has none)."""
    from fitchat.llama.smoke import library_dir

    lib = library_dir()
    if lib is None:
        return None
    for name in ("libggml-rpc.so", "libggml-rpc.dylib", "ggml-rpc.dll"):
        if (lib / name).is_file():
            return lib / name
    return None


def rpc_available() -> bool:
    """Whether this llama.cpp build can use RPC workers (llama_supports_rpc and the library is there)."""
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001 - no usable llama-cpp-python at all
        return False
    try:
        supported = bool(llama_cpp.llama_supports_rpc())
    except AttributeError:
        supported = False
    return supported and library_path() is not None


def require_rpc() -> None:
    """Raise :class:`RpcUnavailable` with the fix when this build cannot use RPC."""
    if not rpc_available():
        raise RpcUnavailable(RPC_FIX)


_lib: ctypes.CDLL | None = None


def _rpc_lib() -> ctypes.CDLL:
    """libggml-rpc with the prototypes fitchat calls (loaded after llama_cpp, so libggml is already in)."""
    global _lib
    if _lib is not None:
        return _lib
    require_rpc()
    import llama_cpp  # noqa: F401 - loads libggml/libllama first

    path = library_path()
    assert path is not None
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    p, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.ggml_backend_rpc_add_server.argtypes, lib.ggml_backend_rpc_add_server.restype = [ctypes.c_char_p], p
    lib.ggml_backend_rpc_get_device_memory.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(sz),
                                                       ctypes.POINTER(sz)]
    lib.ggml_backend_rpc_get_device_memory.restype = None
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, sz, sz, ctypes.POINTER(p)]
    lib.ggml_backend_rpc_start_server.restype = None
    _lib = lib
    return lib


def _ggml() -> Any:
    """libggml's device API (fitchat.model.hardware's calls, and those that find and register devices)."""
    from llama_cpp._ggml import libggml

    g, p, sz = ggml_device_api(libggml), ctypes.c_void_p, ctypes.c_size_t
    g.ggml_backend_dev_by_name.argtypes, g.ggml_backend_dev_by_name.restype = [ctypes.c_char_p], p
    g.ggml_backend_reg_dev_count.argtypes, g.ggml_backend_reg_dev_count.restype = [p], sz
    g.ggml_backend_reg_dev_get.argtypes, g.ggml_backend_reg_dev_get.restype = [p, sz], p
    return g


# --------------------------------------------------------------------------- endpoints


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``'host:50052,10.0.0.2:50053'`` -> the endpoints, checked; :class:`BadEndpoint` (one line) otherwise."""
    from fitchat.format import quoted

    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise BadEndpoint("--rpc needs at least one worker, like 192.168.1.20:50052")
    out: list[str] = []
    for part in parts:
        if not part:
            raise BadEndpoint(f"--rpc {quoted(text)} has an empty entry; separate workers with single commas")
        host, sep, port = part.rpartition(":")
        if not sep or not host:
            raise BadEndpoint(f"worker {quoted(part)} is not HOST:PORT, like 192.168.1.20:{DEFAULT_PORT}")
        if ":" in host or host.startswith("["):
            raise BadEndpoint(f"worker {quoted(part)}: llama.cpp's RPC takes IPv4 addresses and host names, not IPv6")
        if not _HOST_RE.match(host) or not all(_LABEL_RE.match(label) for label in host.split(".")):
            raise BadEndpoint(f"worker {quoted(part)}: {quoted(host)} is not a host name or IPv4 address")
        if not _PORT_RE.match(port) or not 1 <= int(port) <= 65535:
            raise BadEndpoint(f"worker {quoted(part)}: the port must be a number from 1 to 65535")
        endpoint = f"{host}:{int(port)}"
        if endpoint in out:
            raise BadEndpoint(f"worker {endpoint} is named twice in --rpc")
        out.append(endpoint)
    if len(out) > MAX_WORKERS:
        raise BadEndpoint(f"--rpc names {len(out)} workers; llama.cpp takes at most {MAX_WORKERS}")
    return tuple(out)


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when something listens at ``endpoint``; else why not, in words (refused, timed out, unknown host)."""
    return _connect(endpoint, timeout_s)[0]


def _connect(endpoint: str, timeout_s: float) -> tuple[str | None, tuple[str, int] | None]:
    """Connect once: (why not, None), or (None, the address reached: what two names of one worker share)."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            peer = sock.getpeername()
            return None, (str(peer[0]), int(peer[1]))
    except socket.gaierror:
        return f"cannot be reached: no host named {host}", None
    except TimeoutError:
        return f"did not answer within {timeout_s:g} s", None
    except ConnectionRefusedError:
        return "refused the connection (is 'fitchat worker' running there?)", None
    except OSError as exc:
        return f"cannot be reached: {exc.strerror or exc}", None
    except UnicodeError:  # the resolver refuses the name (a label over 63 characters …)
        return f"cannot be reached: {host} is not a name the resolver takes", None


def check_reachable(endpoints: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`WorkerUnreachable` naming the first worker whose port does not answer, and
    :class:`BadEndpoint` for one worker named twice (``localhost:50052,127.0.0.1:50052``): a worker serves
    one client at a time, so the second connection of one load would wait for the first without end."""
    seen: dict[tuple[str, int], str] = {}
    for endpoint in endpoints:
        why, peer = _connect(endpoint, timeout_s)
        if why:
            raise WorkerUnreachable(endpoint, why)
        assert peer is not None
        if peer in seen:
            raise BadEndpoint(f"workers {seen[peer]} and {endpoint} are the same worker ({peer[0]} port {peer[1]}); "
                              "name it once")
        seen[peer] = endpoint


def unreachable(endpoints: Sequence[str], timeout_s: float = 1.0) -> list[str]:
    """The workers among ``endpoints`` whose port no longer answers (after a failure mid-reply); probed at once,
    so many unreachable workers cost one timeout, not one each."""
    if not endpoints:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        failed = list(pool.map(lambda e: probe(e, timeout_s), endpoints))
    return [e for e, why in zip(endpoints, failed) if why]


#: ggml-rpc's abort lines (ggml-rpc.cpp): the process died because a worker broke off or answered wrongly.
_RPC_ABORTS = ("Remote RPC server crashed or returned malformed response", "RPC handshake failed for",
               "Failed to connect to")


def engine_abort(log_lines: Sequence[str], endpoints: Sequence[str]) -> str | None:
    """When a process's last log lines hold ggml-rpc's abort: why, naming the workers it used (the abort
    itself says which only sometimes); None otherwise."""
    if not endpoints or not any(a in line for line in log_lines for a in _RPC_ABORTS):
        return None
    who = f"worker {endpoints[0]}" if len(endpoints) == 1 else f"one of the workers {', '.join(endpoints)}"
    return f"{who} broke off the connection or answered with something that is not llama.cpp's RPC"


def lost_message(gone: Sequence[str]) -> str:
    """The one line for workers that went away while the engine used them (the CLI and the TUI say it)."""
    return f"worker {', '.join(gone)} stopped answering mid-reply; the reply was cut short"


# --------------------------------------------------------------------------- devices


def query_workers(endpoints: Sequence[str], timeout_s: float = QUERY_TIMEOUT_S) -> tuple[RpcDevice, ...]:
    """Every device the workers lend, with free/total memory as llama.cpp sees it through RPC.

    Runs in a child (ggml-rpc aborts on a failed connection, and waits without end on a worker that is
    busy with another client); one line naming the worker when one cannot be reached or does not answer.
    """
    from fitchat.child import module_command
    from fitchat.model.hardware import RpcDevice

    require_rpc()
    check_reachable(endpoints)
    out: list[RpcDevice] = []
    for endpoint in endpoints:  # one child per worker: a failure names its worker
        cmd = module_command("fitchat.llama.rpc", "query", endpoint)
        env = dict(os.environ, GGML_NO_BACKTRACE="1")  # an abort there says its one line, without gdb
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False, env=env)
        except subprocess.TimeoutExpired:
            raise WorkerUnreachable(
                endpoint, f"accepted the connection but did not answer within {timeout_s:g} s "
                "(a worker serves one client at a time: is another fitchat using it?)"
            ) from None
        if done.returncode != 0:
            raise WorkerUnreachable(endpoint, _query_failure(endpoint, done.stderr, done.returncode))
        for d in json.loads(done.stdout.decode().strip().splitlines()[-1]):
            total = int(d["total"])  # a worker's word: free past total is no memory anyone has
            out.append(RpcDevice(endpoint=endpoint, name=d["name"], total_bytes=total,
                                 free_bytes=min(int(d["free"]), total), index=int(d["index"])))
    return tuple(out)


def with_workers(hw: HardwareInfo, endpoints: Sequence[str]) -> HardwareInfo:
    """``hw`` with the workers' devices added (``HardwareInfo.rpc``), as the planner counts them."""
    import dataclasses

    return dataclasses.replace(hw, rpc=query_workers(endpoints))


_VERSION_MISMATCH = re.compile(r"RPC server version mismatch: (\d+\.\d+\.\d+)")


def _query_failure(endpoint: str, stderr: bytes, returncode: int) -> str:
    """Why the query child failed, in words: its own one-line error, or what ggml-rpc's abort means."""
    from fitchat.child import crash_line
    from fitchat.format import printable

    text = stderr.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if returncode == 1 and lines:  # main()'s own FitchatError ("worker HOST:PORT …"): the rest of it
        return printable(lines[-1].removeprefix(f"worker {endpoint} "), 300, one_line=True)
    if m := _VERSION_MISMATCH.search(text):
        return (f"speaks RPC protocol {m.group(1)}, not {RPC_PROTO_MAJOR}.x: run the same fitchat and "
                "llama-cpp-python on both machines")
    if "malformed response" in text or "handshake failed" in text:
        return "closed the connection or answered with something that is not llama.cpp's RPC (is it a fitchat worker?)"
    return f"did not answer the device query: {crash_line(text) if lines else f'status {returncode}'}"


def device_name(endpoint: str, index: int) -> str:
    """llama.cpp's buffer name for device ``index`` of a worker: ``RPC0[host:port]`` (as its load log says)."""
    return f"RPC{index}[{endpoint}]"


@dataclass(frozen=True)
class Registered:
    """One worker device registered in this process: its name and llama.cpp's ``ggml_backend_dev_t``."""

    endpoint: str
    index: int
    name: str
    dev: int


def register(endpoints: Sequence[str]) -> list[Registered]:
    """Connect to every worker in this process and return its devices (for ``llama_model_params.devices``).

    Only child processes call this (the query's, the engine's), after :func:`check_reachable`: a worker that
    fails inside ggml-rpc aborts the process. Each is checked here first (:func:`check_worker`), so only a
    worker that answers well here and lies on the next connection gets that far.
    """
    lib, g = _rpc_lib(), _ggml()
    out: list[Registered] = []
    for endpoint in endpoints:
        check_worker(endpoint)
        reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise WorkerUnreachable(endpoint, "lends no devices")
        for i in range(int(g.ggml_backend_reg_dev_count(reg))):
            out.append(Registered(endpoint, i, device_name(endpoint, i), int(g.ggml_backend_reg_dev_get(reg, i))))
    return out


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed the connection")
        data += chunk
    return data


def _reply(sock: socket.socket, cmd: int, body: bytes, size: int) -> bytes:
    """Send one ggml-rpc request and read its reply of ``size`` bytes (``cmd | u64 size | body`` out,
    ``u64 size | data`` back)."""
    sock.sendall(bytes([cmd]) + struct.pack("<Q", len(body)) + body)
    (got,) = struct.unpack("<Q", _recv_exactly(sock, 8))
    if got != size:
        raise ConnectionError(f"answered {got} bytes where llama.cpp's RPC answers {size}")
    return _recv_exactly(sock, size)


def check_worker(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """The handshake and device count, read here before ggml-rpc sees them: a peer that is not a worker of
    this protocol, or claims more devices than a machine has, gets one line - :class:`WorkerUnreachable`
    naming it (ggml-rpc would abort the process, or make an object per claimed device)."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            hello = _reply(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
            if hello[0] != RPC_PROTO_MAJOR:
                raise WorkerUnreachable(endpoint, f"speaks RPC protocol {hello[0]}.{hello[1]}.{hello[2]}, not "
                                        f"{RPC_PROTO_MAJOR}.x: run the same fitchat and llama-cpp-python on both machines")
            (count,) = struct.unpack("<I", _reply(sock, _CMD_DEVICE_COUNT, b"", 4))
    except TimeoutError:
        raise WorkerUnreachable(endpoint, f"did not answer the handshake within {timeout_s:g} s") from None
    except OSError as exc:  # refused, reset, closed, a reply of the wrong size
        why = exc.strerror if exc.strerror else str(exc)
        raise WorkerUnreachable(endpoint, f"is not a llama.cpp RPC worker of this version: {why}") from None
    if count > MAX_WORKER_DEVICES:
        raise WorkerUnreachable(endpoint, f"claims {count} devices; a worker lends at most {MAX_WORKER_DEVICES}")


def _query_one(endpoint: str) -> list[dict[str, Any]]:
    """In the query child: the worker's devices with free/total memory."""
    lib = _rpc_lib()
    out = []
    for r in register([endpoint]):
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_rpc_get_device_memory(endpoint.encode(), r.index, ctypes.byref(free), ctypes.byref(total))
        out.append({"index": r.index, "name": r.name, "free": free.value, "total": total.value})
    return out


# --------------------------------------------------------------------------- the load parameters of a split


def tensor_split(targets: Sequence[dict[str, Any]]) -> list[float]:
    """``Llama(tensor_split=…)`` for a plan's offload devices: whole layer counts, which llama.cpp places
    exactly (fitchat.model.split.assign_units mirrors its rule)."""
    return [float(t["layers"]) for t in targets]


@contextlib.contextmanager
def load_devices(targets: Sequence[dict[str, Any]]) -> Iterator[None]:
    """While inside, loads in this thread use exactly ``targets`` ({name, layers, endpoint, index}, in the
    plan's order: workers' devices, then local GPUs) as ``llama_model_params.devices``.

    Each worker answers a handshake first, in a child with a deadline (ggml-rpc would abort this process on
    a dead one, and wait without end on one busy with another client); then they are registered here.
    """
    from fitchat.llama.smoke import model_params_override

    endpoints = list(dict.fromkeys(t["endpoint"] for t in targets if t["endpoint"]))
    query_workers(endpoints)
    registered = {(r.endpoint, r.index): r.dev for r in register(endpoints)}
    g = _ggml()
    ptrs: list[int] = []
    for t in targets:
        if t["endpoint"]:
            dev = registered.get((t["endpoint"], t["index"]))
            if dev is None:
                raise WorkerUnreachable(t["endpoint"], f"has no device {t['index']} any more")
        else:
            dev = g.ggml_backend_dev_by_name(t["name"].encode())
            if not dev:
                raise LoadFailed(f"this machine has no device {t['name']} any more")
        ptrs.append(int(dev))
    arr = (ctypes.c_void_p * (len(ptrs) + 1))(*ptrs, None)  # NULL-terminated; alive for the whole load
    with model_params_override(devices=ctypes.addressof(arr)):
        yield


# --------------------------------------------------------------------------- the server side


@dataclass(frozen=True)
class LocalDevice(BackendDevice):
    """A device of this machine a worker can lend, with llama.cpp's handle for it in this process."""

    dev: int


def local_devices() -> list[LocalDevice]:
    """This machine's llama.cpp devices (CPU, CUDA0, Metal …), with their memory."""
    return [LocalDevice(**asdict(d), dev=dev) for dev, d in ggml_device_handles(_ggml())]


def worker_devices(names: Sequence[str] = ()) -> list[LocalDevice]:
    """The devices a worker lends: those named, else every GPU, else the CPU (llama.cpp's rpc-server rule)."""
    devices = local_devices()
    if names:
        by_name = {d.name.lower(): d for d in devices}
        chosen = []
        for name in names:
            d = by_name.get(name.lower())
            if d is None:
                known = ", ".join(d.name for d in devices) or "none"
                raise FitchatError(f"no device named {name!r} here; this machine has: {known}")
            chosen.append(d)
        return chosen
    gpus = [d for d in devices if d.kind == "gpu"]
    return gpus or [d for d in devices if d.kind == "cpu"][:1]


def start_server(endpoint: str, devices: Sequence[LocalDevice], n_threads: int, cache_dir: str | None) -> None:
    """Serve ``devices`` at ``endpoint``: blocks for as long as the server runs (call it from a thread)."""
    lib = _rpc_lib()
    arr = (ctypes.c_void_p * len(devices))(*[d.dev for d in devices])
    lib.ggml_backend_rpc_start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None,
                                      n_threads, len(devices), arr)


# --------------------------------------------------------------------------- child entry


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fitchat.llama.rpc query HOST:PORT``: the worker's devices as one JSON line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "query":
        print("usage: python -m fitchat.llama.rpc query HOST:PORT", file=sys.stderr)
        return 2
    try:
        devices = _query_one(args[1])
    except FitchatError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(devices) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
