"""The cache folder and the content digests that key every cache."""
from __future__ import annotations

import hashlib
import os

import pytest

from repbend import cache


@pytest.fixture
def memo_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MEMO_MIN_BYTES", 0)
    return tmp_path / "cache" / "digests"


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("REPBEND_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "repbend"
    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"


def test_a_large_file_is_hashed_once_until_it_changes(tmp_path, memo_every_file, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"placeholder weights " * 1000)
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert cache.file_digest(weights) == expected
    assert len(list(memo_every_file.iterdir())) == 1

    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: reads.append(args[0]) or real_open(*args, **kwargs))
    assert cache.file_digest(weights) == expected
    assert str(weights) not in map(str, reads)  # remembered, not read again

    weights.write_bytes(b"other placeholder weights " * 1000)  # rewritten: hashed anew
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.file_digest(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()[:16] != expected


def test_small_files_are_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path / "cache"))
    small = tmp_path / "adapter_model.safetensors"
    small.write_bytes(b"tiny")
    assert cache.file_digest(small) == hashlib.sha256(b"tiny").hexdigest()[:16]
    assert not (tmp_path / "cache").exists()


def test_a_folder_digest_follows_its_weight_files(tmp_path, memo_every_file):
    (tmp_path / "model.safetensors").write_bytes(b"placeholder")
    (tmp_path / "config.json").write_text("{}")
    first = cache.folder_digest(tmp_path)
    (tmp_path / "config.json").write_text('{"changed": true}')  # not a weight file
    assert cache.folder_digest(tmp_path) == first
    (tmp_path / "model-2.safetensors").write_bytes(b"more")
    assert cache.folder_digest(tmp_path) != first
