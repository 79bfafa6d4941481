"""Loaders of tiered-ImageNet, CIFAR-FS, FC100 and CUB-200-2011 on tiny fixtures in their real on-disk
formats, and the shared download helper (offline: ``file://`` addresses)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from lightning_meta.data.download import extract, fetch
from lightning_meta.errors import ConfigurationError


# --------------------------------------------------------------------------- download helper
def served(tmp_path: Path, name: str, payload: bytes) -> str:
    path = tmp_path / "server" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path.as_uri()


def test_fetch_tries_mirrors_and_checks_the_checksum(tmp_path):
    payload = b"some data file" * 100
    good = served(tmp_path, "file.bin", payload)
    broken = (tmp_path / "nowhere" / "file.bin").as_uri()
    target = tmp_path / "data" / "file.bin"
    path = fetch([broken, good], target, md5=hashlib.md5(payload).hexdigest(), what="a test file")
    assert path == target and target.read_bytes() == payload
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary file left
    # an existing file is used as is: no address is contacted
    assert fetch([broken], target, what="a test file") == target
    # sha256 works too
    other = fetch(good, tmp_path / "data2" / "file.bin", sha256=hashlib.sha256(payload).hexdigest(), what="x")
    assert other.read_bytes() == payload


def test_fetch_checksum_mismatch_removes_the_file(tmp_path):
    url = served(tmp_path, "file.bin", b"changed contents")
    target = tmp_path / "data" / "file.bin"
    with pytest.raises(ConfigurationError) as error:
        fetch(url, target, md5="0" * 32, what="CIFAR-100 (Krizhevsky)")
    message = str(error.value)
    assert "\n" not in message and "md5 checksum mismatch" in message and "file.bin" in message
    assert "data.init_args.download" in message and str(target.parent.resolve()) in message
    assert "CIFAR-100 (Krizhevsky)" in message
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_fetch_without_any_working_mirror_names_the_sources(tmp_path):
    urls = [(tmp_path / "a" / "x.pkl").as_uri(), (tmp_path / "b" / "x.pkl").as_uri()]
    with pytest.raises(ConfigurationError, match=r"could not fetch x\.pkl, tiered-ImageNet .*a/x\.pkl.*b/x\.pkl"):
        fetch(urls, tmp_path / "data" / "x.pkl", what="tiered-ImageNet (learn2learn)")


def test_fetch_refuses_an_html_page(tmp_path):
    url = served(tmp_path, "page.html", b"<html>quota exceeded</html>")
    with pytest.raises(ConfigurationError, match="HTML page"):
        fetch(url, tmp_path / "data" / "big.pkl", what="x")


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".zip"])
def test_extract_unpacks_archives(tmp_path, suffix):
    members = {"top/a.txt": b"a", "top/sub/b.txt": b"bb"}
    archive = tmp_path / f"archive{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        make_tar(archive, members, "w" if suffix == ".tar" else "w:gz")
    out = extract(archive, tmp_path / "out")
    assert (out / "top" / "a.txt").read_bytes() == b"a" and (out / "top" / "sub" / "b.txt").read_bytes() == b"bb"
    assert sorted(p.name for p in out.iterdir()) == ["top"]  # no temporary folder left


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "top/../../escape.txt"])
def test_extract_refuses_paths_leaving_the_folder(tmp_path, name):
    tar = make_tar(tmp_path / "evil.tar.gz", {"top/ok.txt": b"ok", name: b"x"})
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("top/ok.txt", b"ok")
        z.writestr(name, b"x")
    for archive in (tar, tmp_path / "evil.zip"):
        out = tmp_path / f"out_{archive.name}"
        with pytest.raises(ConfigurationError, match="refusing to extract"):
            extract(archive, out)
        assert list(out.iterdir()) == []  # nothing written, not even the harmless member
    assert not (tmp_path / "escape.txt").exists()


def test_extract_refuses_a_link_pointing_out(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("top/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        t.addfile(info)
    with pytest.raises(ConfigurationError, match="refusing to extract 'top/link'"):
        extract(archive, tmp_path / "out")


def test_extract_of_a_broken_archive_is_a_configuration_error(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not a gzip file")
    with pytest.raises(ConfigurationError, match="not a readable archive"):
        extract(archive, tmp_path / "out")
