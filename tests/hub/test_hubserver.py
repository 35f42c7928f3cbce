"""The local Hub behaves like the real one for the unmodified huggingface_hub client."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError

from tests.hubserver import LocalHub

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, LFS because of the .gguf suffix


@pytest.fixture
def repo(hub: LocalHub) -> str:
    hub.add_repo("org/Tiny-GGUF", {"tiny-Q8_0.gguf": PAYLOAD, "notes.txt": b"hello"}, downloads=3)
    return "org/Tiny-GGUF"


def test_model_info_lists_sizes_and_lfs_sha256(hub: LocalHub, repo: str) -> None:
    info = HfApi(endpoint=hub.endpoint).model_info(repo, files_metadata=True)
    files = {s.rfilename: s for s in info.siblings}
    assert files["tiny-Q8_0.gguf"].size == len(PAYLOAD)
    assert files["tiny-Q8_0.gguf"].lfs.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert files["notes.txt"].lfs is None
    assert info.sha == hub.repos[repo].commit
    plain = HfApi(endpoint=hub.endpoint).model_info(repo)
    assert {s.size for s in plain.siblings} == {None}


def test_resolve_redirects_to_cdn_on_another_host(hub: LocalHub, repo: str) -> None:
    meta = get_hf_file_metadata(hf_hub_url(repo, "tiny-Q8_0.gguf", endpoint=hub.endpoint))
    assert meta.location.startswith(hub.cdn + "/repos/")
    assert meta.etag == hashlib.sha256(PAYLOAD).hexdigest()
    assert meta.size == len(PAYLOAD)
    assert meta.commit_hash == hub.repos[repo].commit
    # the Hub host does not serve CDN paths, nor the CDN host Hub paths
    assert httpx2.get(meta.location.replace("localhost", "127.0.0.1")).status_code == 404
    assert httpx2.get(hf_hub_url(repo, "tiny-Q8_0.gguf", endpoint=hub.cdn)).status_code == 404


def test_cdn_honours_range(hub: LocalHub, repo: str) -> None:
    r = httpx2.get(hf_hub_url(repo, "tiny-Q8_0.gguf", endpoint=hub.endpoint), headers={"Range": "bytes=10-19"},
                   follow_redirects=True)
    assert r.status_code == 206
    assert r.content == PAYLOAD[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(PAYLOAD)}"
    tail = httpx2.get(str(r.url), headers={"Range": "bytes=-5"})
    assert tail.content == PAYLOAD[-5:]
    assert httpx2.get(str(r.url), headers={"Range": f"bytes={len(PAYLOAD)}-"}).status_code == 416


def test_download_into_cache_and_resume_after_drop(hub: LocalHub, repo: str, tmp_path: Path) -> None:
    big = Path(tmp_path / "big.gguf")
    big.write_bytes(PAYLOAD * 24)  # 24 MiB: more than one 10 MiB client chunk
    hub.add_repo("org/Big-GGUF", {"big-Q4_0.gguf": big})
    hub.drop_connection(15 << 20)
    path = hf_hub_download("org/Big-GGUF", "big-Q4_0.gguf", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == big.read_bytes()
    gets = hub.cdn_requests()
    assert len(gets) == 2 and gets[0].bytes_sent == 15 << 20
    assert gets[1].range == f"bytes={10 << 20}-"  # resumed from the last whole chunk written


def test_search_filters_and_sorts(hub: LocalHub, repo: str) -> None:
    hub.add_repo("org/Popular-GGUF", {"p-Q4_K_M.gguf": b"GGUF"}, downloads=100)
    hub.add_repo("org/Popular-safetensors", {"model.safetensors": b"x"}, downloads=1000, tags=["transformers"])
    api = HfApi(endpoint=hub.endpoint)
    assert [m.id for m in api.list_models(search="gguf", filter="gguf", limit=10)] == ["org/Popular-GGUF", "org/Tiny-GGUF"]
    assert [m.id for m in api.list_models(search="popular", filter="gguf")] == ["org/Popular-GGUF"]
    assert [m.id for m in api.list_models(filter="gguf", limit=1)] == ["org/Popular-GGUF"]


def test_tree_lists_files(hub: LocalHub, repo: str) -> None:
    files = {f.path: f for f in HfApi(endpoint=hub.endpoint).list_repo_tree(repo)}
    assert files["tiny-Q8_0.gguf"].lfs.sha256 == hashlib.sha256(PAYLOAD).hexdigest()


def test_gated_repo_needs_a_granted_token(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_repo("org/Gated-GGUF", {"g-Q4_0.gguf": PAYLOAD}, gated=True)
    with pytest.raises(GatedRepoError) as anon:
        hf_hub_download("org/Gated-GGUF", "g-Q4_0.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert anon.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as denied:
        hf_hub_download("org/Gated-GGUF", "g-Q4_0.gguf", endpoint=hub.endpoint, cache_dir=tmp_path, token="hf_other")
    assert denied.value.response.status_code == 403
    hub.grant("hf_ok", "org/Gated-GGUF")
    path = hf_hub_download("org/Gated-GGUF", "g-Q4_0.gguf", endpoint=hub.endpoint, cache_dir=tmp_path, token="hf_ok")
    assert Path(path).read_bytes() == PAYLOAD
    assert HfApi(endpoint=hub.endpoint).model_info("org/Gated-GGUF").gated == "manual"


def test_missing_repo_and_file(hub: LocalHub, repo: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/Nope", "a.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo, "nope.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint).model_info("org/Nope")


def test_faults_500_corrupt_and_slow(hub: LocalHub, repo: str) -> None:
    url = hf_hub_url(repo, "tiny-Q8_0.gguf", endpoint=hub.endpoint)
    hub.fail(500, route="resolve", times=1)
    with pytest.raises(HfHubHTTPError) as err:
        get_hf_file_metadata(url)
    assert err.value.response.status_code == 500
    assert get_hf_file_metadata(url).size == len(PAYLOAD)  # only once

    hub.corrupt(at_byte=7)
    body = httpx2.get(url, follow_redirects=True).content
    assert body != PAYLOAD and sum(a != b for a, b in zip(body, PAYLOAD)) == 1

    hub.clear_faults()
    hub.slow(2 << 20)  # 2 MiB/s: the 1 MiB body takes about half a second
    started = time.monotonic()
    assert httpx2.get(url, follow_redirects=True).content == PAYLOAD
    assert time.monotonic() - started >= 0.4
