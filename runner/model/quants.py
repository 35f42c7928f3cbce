"""Quant names, split sets and which files are models, recognised from GGUF file names.

``quant_from_filename("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"``;
``split_part("m-Q8_0-00002-of-00003.gguf") == ("m-Q8_0.gguf", 2, 3)``;
``is_model_gguf("mmproj-model-f16.gguf") is False``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Longest forms first inside each family, so Q4_K_M wins over Q4_K and IQ2_XXS over IQ2_XS.
_QUANT = re.compile(
    r"(?<![A-Z0-9])("
    r"(?:UD-)?"
    r"(?:"
    r"IQ[1-4]_(?:XXS|XS|NL|S|M)"
    r"|Q[2-8]_K(?:_(?:XXL|XL|L|M|S))?"
    r"|Q[4-8]_[01](?:_[48]_[48])?"
    r"|TQ[12]_0"
    r"|MXFP4(?:_MOE)?"
    r"|BF16|FP16|F16|FP32|F32"
    r")"
    r")(?![A-Z0-9])"
)
_SPLIT = re.compile(r"^(?P<base>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)

# Rough bits per weight, for ordering variants and for a size guess when nothing better is known.
QUANT_BITS: dict[str, float] = {
    "IQ1_S": 1.56, "IQ1_M": 1.75, "TQ1_0": 1.69, "TQ2_0": 2.06, "IQ2_XXS": 2.06, "IQ2_XS": 2.31, "IQ2_S": 2.5,
    "IQ2_M": 2.7, "Q2_K": 2.63, "Q2_K_S": 2.6, "Q2_K_L": 3.0, "IQ3_XXS": 3.06, "IQ3_XS": 3.3, "IQ3_S": 3.44,
    "IQ3_M": 3.66, "Q3_K_S": 3.5, "Q3_K_M": 3.91, "Q3_K_L": 4.27, "Q3_K_XL": 4.4, "IQ4_XS": 4.25,
    "IQ4_NL": 4.5, "Q4_0": 4.55, "Q4_1": 5.0, "Q4_K_S": 4.58, "Q4_K_M": 4.89, "Q4_K_L": 5.3, "Q4_K_XL": 5.0,
    "MXFP4": 4.25, "MXFP4_MOE": 4.25, "Q5_0": 5.54, "Q5_1": 6.0, "Q5_K_S": 5.54, "Q5_K_M": 5.7,
    "Q5_K_L": 6.0, "Q5_K_XL": 6.0, "Q6_K": 6.56, "Q6_K_L": 6.9, "Q6_K_XL": 7.0, "Q8_0": 8.5, "Q8_K_XL": 9.0,
    "F16": 16.0, "BF16": 16.0, "F32": 32.0,
}


def split_part(name: str) -> tuple[str, int, int] | None:
    """``(base, part, total)`` for a split GGUF part (``X-00001-of-00003.gguf`` -> ``("X.gguf", 1, 3)``)."""
    m = _SPLIT.match(name)
    if not m:
        return None
    part, total = int(m["part"]), int(m["total"])
    if not 1 <= part <= total:
        return None
    return m["base"] + m["ext"], part, total


def split_names(first: str, total: int) -> list[str]:
    """All part names of the split set whose first part is ``first``."""
    m = _SPLIT.match(first)
    if not m:
        return [first]
    return [f"{m['base']}-{i:05d}-of-{total:05d}{m['ext']}" for i in range(1, total + 1)]


def is_model_gguf(path: str) -> bool:
    """A GGUF file that is a language model, by its name: not a vision projector (``mmproj*``) nor an imatrix.

    The one filter for every listing of models: a Hub repo's files, the HF cache, a folder given to
    ``fit`` or ``compare``. ``path`` may have folders; only the file name counts.
    """
    name = path.rsplit("/", 1)[-1].lower()
    return name.endswith(".gguf") and not name.startswith("mmproj") and "imatrix" not in name


def split_sets(paths: Iterable[str]) -> list[tuple[str, ...]]:
    """The models among ``paths`` (``/``-separated, relative to one root), each as the files to fetch or load.

    A plain file is a set of one; a split set (``X-00001-of-00003.gguf`` …) is one entry of all its parts,
    first part first, listed only when every part is among ``paths``. Parts other than the first never
    start an entry. Sorted by first file. Callers filter with :func:`is_model_gguf` first.
    """
    present = set(paths)
    sets: list[tuple[str, ...]] = []
    for name in sorted(present):
        folder, _, base = name.rpartition("/")
        split = split_part(base)
        if split is None:
            sets.append((name,))
            continue
        if split[1] != 1:
            continue
        names = tuple(f"{folder}/{n}" if folder else n for n in split_names(base, split[2]))
        if all(n in present for n in names):
            sets.append(names)
    return sets


def quant_from_filename(name: str) -> str | None:
    """The quant in a GGUF file name (``Q4_K_M``, ``IQ4_XS``, ``F16``, ``BF16`` …), or None.

    Looks at the base name first (split suffix removed), then at the folders above it, since some repos
    keep split sets in a folder named after the quant. ``FP16``/``FP32`` are reported as ``F16``/``F32``.
    """
    parts = name.replace("\\", "/").split("/")
    for piece in reversed(parts):
        split = split_part(piece)
        if split:
            piece = split[0]
        stem = re.sub(r"\.gguf$", "", piece, flags=re.IGNORECASE).upper()
        found = _QUANT.findall(stem)
        if found:
            quant = found[-1]
            return {"FP16": "F16", "FP32": "F32"}.get(quant, quant)
    return None


def quant_bits(quant: str | None) -> float | None:
    """Approximate bits per weight of a quant name (``UD-`` prefix ignored)."""
    if quant is None:
        return None
    return QUANT_BITS.get(quant.upper().removeprefix("UD-"))
