"""Which weights produced a number: the ``plpp_origin`` marker, the OpenAI checksum test, the SHA-256 cache.

Real files in ``tmp_path``: tiny CLIPs written by ``plpp.tools.random_clip`` and by ``torch.save``, read
back through the real loader. No OpenAI weights can be downloaded here, so the OpenAI case registers a
tiny file's checksum as one more model of the installed ``clip`` package's table (the table is data:
the code path that recognises a release is the real one).
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from plpp.clip_utils import import_clip, load_clip
from plpp.provenance import KIND_LABELS, ORIGIN_KEY, file_sha256, identify_backbone, origin_marker, read_origin
from plpp.tools import random_clip
from tests.conftest import build_tiny_clip, save_tiny_clip


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_random_clip_marks_its_file_and_the_loader_reads_through_the_marker(tmp_path):
    path = tmp_path / "random.pt"
    assert random_clip.main(["--arch", "tiny", "-o", str(path), "--seed", "3"]) == 0
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {ORIGIN_KEY, "state_dict"}
    assert saved[ORIGIN_KEY] == {"kind": "random", "tool": "plpp.tools.random_clip", "arch": "tiny", "seed": 3,
                                 "dtype": "fp16"}
    model = load_clip(str(path))  # the marker is not part of the state dict handed to clip's build_model
    assert model.visual.input_resolution == 32
    record = identify_backbone(str(path))
    assert record["kind"] == "random" and record["sha256"] == sha(path) and record["release"] is None
    assert record["origin"]["arch"] == "tiny" and record["file"] == str(path) and record["size"] > 0
    assert KIND_LABELS["random"] == "random weights: not a result"


def test_other_files_and_crafted_markers_are_other(tmp_path):
    plain = save_tiny_clip(tmp_path / "plain.pt")
    assert read_origin(str(plain)) is None and identify_backbone(str(plain))["kind"] == "other"
    state = build_tiny_clip().state_dict()
    claims_openai = tmp_path / "claims_openai.pt"  # only a checksum makes a file an OpenAI release
    torch.save({ORIGIN_KEY: {"kind": "openai", "tool": "me"}, "state_dict": state}, claims_openai)
    assert identify_backbone(str(claims_openai))["kind"] == "other"
    proxy = tmp_path / "proxy.pt"
    torch.save({ORIGIN_KEY: origin_marker("proxy_world", "plpp.tools.proxy_world", seed=0), "state_dict": state},
               proxy)
    assert identify_backbone(str(proxy))["kind"] == "proxy_world"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    assert read_origin(str(garbage)) is None
    with pytest.raises(ValueError, match="origin kind 'openai'"):
        origin_marker("openai", "me")


def test_a_file_with_an_official_checksum_is_an_openai_release(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    path = save_tiny_clip(cache / "Tiny-Test.pt")
    url = f"https://openaipublic.azureedge.net/clip/models/{sha(path)}/Tiny-Test.pt"
    monkeypatch.setitem(import_clip().clip._MODELS, "Tiny/Test", url)
    monkeypatch.setenv("PLPP_CLIP_CACHE", str(cache))
    by_name = identify_backbone("Tiny/Test")  # an OpenAI name, found in the cache by its checksum
    assert by_name["kind"] == "openai" and by_name["release"] == "Tiny/Test" and by_name["origin"] is None
    by_path = identify_backbone(str(path))  # the same file given as a path
    assert by_path["kind"] == "openai" and by_path["release"] == "Tiny/Test" and by_path["name"] == str(path)


def test_file_hash_is_cached_per_size_and_mtime(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(str(path))
    assert first == sha(path) and file_sha256(str(path)) == first
    path.write_bytes(b"b" * 1001)  # another content: size and mtime change, so the hash is taken again
    os.utime(path, ns=(1, 1))
    assert file_sha256(str(path)) == sha(path) != first
