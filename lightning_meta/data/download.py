"""Fetch a data file from its public mirrors, atomically and checked, and unpack archives safely.

Every data module with ``download: true`` goes through :func:`fetch`: the file is written to a
temporary name beside its destination and moved in place only once complete and its checksum
verified, so an interrupted download never leaves a truncated file that a later run would read.
Mirrors are tried in turn (the downloads of learn2learn and torchmeta break when their one host
moves: torchmeta #54/#92/#134, learn2learn #310).  When none works the error is one line that says
which file, where it comes from, and the folder to copy it into by hand.

Example::

    from lightning_meta.data.download import extract, fetch

    archive = fetch(["https://example.org/cub.tgz", "https://mirror.example.org/cub.tgz"],
                    Path("data/CUB_200_2011.tgz"), md5="97eceeb196236b17998738112f37df78",
                    what="CUB-200-2011 (Caltech)")
    extract(archive, Path("data"))
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: seconds to wait for a server to answer before trying the next mirror
TIMEOUT_S = 60
CHUNK = 1 << 20
#: some hosts (Dropbox, Google) refuse urllib's default user agent
HEADERS = {"User-Agent": "Mozilla/5.0 (lightning-meta data download)"}


def google_drive_url(file_id: str) -> str:
    """The direct-download address of a public Google Drive file (large files included: ``confirm=t``
    skips the "cannot scan for viruses" page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of ``path`` (``algorithm``: ``"md5"`` or ``"sha256"``), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(md5: Optional[str], sha256: Optional[str]) -> Optional[tuple[str, str]]:
    if md5 and sha256:
        raise ValueError("give one checksum, md5 or sha256, not both")
    if md5:
        return "md5", md5.lower()
    if sha256:
        return "sha256", sha256.lower()
    return None


def _copy_url(url: str, target: Path, name: str) -> None:
    """Write the body of ``url`` into ``target`` with a progress bar; an HTML page (a host's error or
    login page) is refused unless an HTML file was asked for."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers=HEADERS)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        kind = (response.headers.get("Content-Type") or "") if hasattr(response, "headers") else ""
        if kind.startswith("text/html") and not name.lower().endswith((".html", ".htm")):
            raise OSError("the server answered with an HTML page, not the file")
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        total = int(length) if length and length.isdigit() else None
        with open(target, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                              desc=f"downloading {name}", leave=False, mininterval=1.0) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))


def fetch(urls: Union[str, Sequence[str]], destination: Union[str, Path], *, md5: Optional[str] = None,
          sha256: Optional[str] = None, what: str) -> Path:
    """Download ``destination`` from the first of ``urls`` that works and return its path.

    A destination that already exists is returned as is (the user's own copy is trusted; it is not
    re-hashed on every run).  Each mirror is written to ``destination.part<pid>`` and moved in place
    with :func:`os.replace` only when complete and, when a checksum is given, matching it; a file
    whose checksum does not match is deleted and the next mirror tried.  ``what`` says where the
    file comes from (``"CIFAR-100 (Krizhevsky, cs.toronto.edu)"``) and appears in the error.

    Raises :class:`~lightning_meta.errors.ConfigurationError` (one line) naming the file, its source,
    the ``data.init_args.download`` flag and the folder to copy it into when no mirror worked.
    """
    destination = Path(destination).expanduser()
    if destination.is_file():
        return destination
    urls = [urls] if isinstance(urls, str) else list(urls)
    expected = _expected(md5, sha256)
    folder = destination.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"{DATA_ARGS}download=true: cannot create {folder} for {destination.name} ({error}): set"
            " data.init_args.root to a writable folder") from error
    tmp = destination.with_name(f"{destination.name}.part{os.getpid()}")
    failures = []
    for url in urls:
        try:
            _copy_url(url, tmp, destination.name)
            if expected is not None:
                algorithm, digest = expected
                actual = file_digest(tmp, algorithm)
                if actual != digest:
                    raise OSError(f"{algorithm} checksum mismatch: expected {digest}, got {actual}"
                                  " (a changed or truncated file; it was deleted)")
            os.replace(tmp, destination)
            return destination
        except Exception as error:  # any mirror's failure: try the next one
            failures.append(f"{url}: {' '.join(str(error).split()) or type(error).__name__}")
        finally:
            if tmp.exists():
                tmp.unlink()
    sources = "; ".join(failures) if failures else "no address known"
    raise ConfigurationError(
        f"{DATA_ARGS}download=true could not fetch {destination.name}, {what} ({sources}). Without network"
        f" access, download {destination.name} yourself and copy it into {folder.resolve()} (it is then used"
        " as is, with or without data.init_args.download)")


def _inside(folder: Path, name: str) -> bool:
    """Whether the archive member ``name`` stays inside ``folder`` once extracted."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        return False
    return os.path.commonpath([folder, os.path.abspath(folder / pure)]) == str(folder)


def extract(archive: Union[str, Path], folder: Union[str, Path]) -> Path:
    """Unpack a ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` archive into ``folder`` and return ``folder``.

    Members that would land outside ``folder`` (absolute paths, ``..``, links pointing out, device
    files) make it refuse the whole archive before anything is written.  The archive is unpacked into
    a hidden temporary folder inside ``folder`` first and its top-level entries moved in place at the
    end, so an interrupted extraction leaves no half tree; an entry that already exists is kept (the
    user's copy wins) and the new one discarded.

    Example::

        extract(Path("data/cifar-100-python.tar.gz"), Path("data"))   # -> data/cifar-100-python/
    """
    archive, folder = Path(archive).expanduser(), Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(folder))
    name = archive.name.lower()
    tmp = base / f".{archive.name}.extract{os.getpid()}"
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                bad = [m for m in z.namelist() if not _inside(base, m)]
                if bad:
                    raise ConfigurationError(f"{archive}: refusing to extract {bad[0]!r}, which would land outside"
                                             f" {base}; the archive is not the expected one, delete it")
                z.extractall(tmp)
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    link_ok = not (m.issym() or m.islnk()) or _inside(
                        base, str(PurePosixPath(m.name).parent / m.linkname) if m.issym() else m.linkname)
                    if not _inside(base, m.name) or not link_ok or m.isdev():
                        raise ConfigurationError(
                            f"{archive}: refusing to extract {m.name!r}, which would land outside {base}; the"
                            " archive is not the expected one, delete it")
                if hasattr(tarfile, "data_filter"):
                    t.extractall(tmp, members=members, filter="data")
                else:
                    t.extractall(tmp, members=members)
        else:
            raise ValueError(f"{archive}: unknown archive type (expected .tar, .tar.gz, .tgz or .zip)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigurationError(f"{archive} is not a readable archive ({error}): delete it and download it"
                                 f" again (data.init_args.download: true)") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        for entry in sorted(os.listdir(tmp)):
            target = base / entry
            if not target.exists():
                os.replace(tmp / entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def unpack_archive(root: Union[str, Path], archive_name: str, urls: Union[str, Sequence[str]], *, download: bool,
                   what: str, md5: Optional[str] = None, sha256: Optional[str] = None) -> None:
    """Extract ``root/archive_name`` into ``root``, fetching it first (checked) when it is absent and
    ``download`` is set; nothing happens when it is absent and ``download`` is not.  The caller then
    checks its files and names what is still missing.

    Example::

        unpack_archive("data", "CUB_200_2011.tgz", URLS, download=True, md5=MD5, what="CUB-200-2011")
    """
    root = Path(root).expanduser()
    archive = root / archive_name
    if not archive.is_file() and download:
        fetch(urls, archive, md5=md5, sha256=sha256, what=what)
    if archive.is_file():
        extract(archive, root)


def missing_where(root: Union[str, Path], missing: Path) -> str:
    """Where a data set was not found, for its one-line error: the root folder or the first missing file."""
    root = Path(root).expanduser()
    return f"folder {root.resolve()} does not exist" if not root.is_dir() else f"{missing.resolve()} is missing"

