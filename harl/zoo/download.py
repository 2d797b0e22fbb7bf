"""Fetch zoo files: cache folder, resumable HTTP downloads, mirrors, sha256 before use.

Guarantees:

- a file is only ever used after its size and sha256 match the manifest;
- bytes arrive in ``<final>.part``; only a verified ``.part`` is renamed (``os.replace``) to the
  final name, so a partial or corrupt download is never left under the final name;
- an interrupted download is resumed with an HTTP ``Range`` request (mirrors serve identical bytes,
  so a partial file from one mirror is resumed from the next);
- a ``.part`` that fails its checksum is deleted; a cached file that no longer matches is deleted
  and fetched again;
- a download never reads more than the manifest's size (plus one byte): a server that announces
  or sends a longer body is refused as soon as that is known, and the partial file is deleted;
- a failure (offline, refused, 404, truncated, wrong checksum) raises :class:`ZooDownloadError`
  with a one-line message naming every URL tried and the cache path.

Only the standard library (``urllib``) is used; no torch import.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

from harl.zoo.manifest import ZooEntry
from harl.errors import ZooDownloadError
from harl.version import __version__

CACHE_ENV = "HARL_CACHE"
CHUNK = 1 << 16


class _TransferError(Exception):
    def __init__(self, reason: str, resumable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.resumable = resumable


def cache_root(cache_dir: Optional[str] = None) -> str:
    """``cache_dir``, else ``$HARL_CACHE``, else ``~/.cache/harl``."""
    path = cache_dir or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "harl")
    return os.path.abspath(os.path.expanduser(path))


def cached_path(entry: ZooEntry, cache_dir: Optional[str] = None) -> str:
    """Where a downloaded copy of ``entry`` lives: ``<cache>/zoo/<name>-<sha256[:12]><ext>``.

    The checksum prefix in the name means a changed manifest entry never reuses a stale file.
    """
    return os.path.join(cache_root(cache_dir), "zoo", f"{entry.name}-{entry.sha256[:12]}{entry.extension}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str, sha256: str, size: Optional[int] = None) -> Optional[str]:
    """None when ``path`` has the expected size and sha256, else why not (one line)."""
    if not os.path.isfile(path):
        return "missing"
    have = os.path.getsize(path)
    if size is not None and have != size:
        reason = f"size {have} bytes, expected {size}"
        with open(path, "rb") as f:
            if f.read(40).startswith(b"version https://git-lfs"):
                reason += " (it is a Git LFS pointer: run `git lfs pull`)"
        return reason
    digest = sha256_file(path)
    if digest != sha256:
        return f"sha256 {digest}, expected {sha256}"
    return None


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released on exit or when the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        reason = err.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return f"host not found ({reason.strerror or reason})"
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return "timed out"
        return str(reason)
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(err).__name__}: {err}"


def _fetch(url: str, part: str, size: Optional[int], progress: bool, timeout: float, desc: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with Range when ``part`` has bytes)."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and have > size:
        os.remove(part)
        have = 0
    if size is not None and have == size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": f"harl/{__version__}"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # our partial file does not fit this server's file: start over
            os.remove(part)
            raise _TransferError("HTTP 416 for a resumed download; partial file discarded", resumable=True)
        raise _TransferError(_describe(err)) from err
    except (urllib.error.URLError, OSError) as err:
        raise _TransferError(_describe(err)) from err
    with resp:
        status = getattr(resp, "status", None) or getattr(resp, "code", None)
        if have and status == 206:
            if not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                os.remove(part)  # another range than asked for: start over without Range
                raise _TransferError("server answered with another byte range", resumable=True)
        elif have:
            have = 0  # the server ignored Range (200, file://): it sends the whole file
        if have == 0 and os.path.exists(part):
            os.remove(part)
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length is not None and length.isdigit() else size
        if size is not None and expected is not None and expected > size:
            if os.path.exists(part):
                os.remove(part)
            raise _TransferError(f"server announces {expected} bytes, the manifest says {size}; not downloaded")
        from tqdm import tqdm

        got = have
        try:
            with open(part, "ab") as f, tqdm(total=size or expected, initial=have, unit="B", unit_scale=True,
                                             unit_divisor=1024, desc=desc, disable=not progress,
                                             file=sys.stderr, leave=False) as bar:
                while True:
                    # never read more than one byte past the manifest's size
                    want = CHUNK if size is None else min(CHUNK, size + 1 - got)
                    chunk = resp.read(want)
                    if not chunk:
                        break
                    got += len(chunk)
                    if size is not None and got > size:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (OSError, socket.timeout, ValueError) as err:
            raise _TransferError(f"transfer interrupted ({_describe(err)})", resumable=True) from err
    if size is not None and got > size:
        os.remove(part)
        raise _TransferError(f"server sent more than the manifest's {size} bytes; stopped reading, "
                             "partial file discarded")
    got = os.path.getsize(part)
    if expected is not None and got < expected:
        raise _TransferError(f"connection closed after {got} of {expected} bytes", resumable=True)


def download_file(urls: Sequence[str], dest: str, sha256: str, size: Optional[int] = None,
                  progress: bool = True, retries: int = 2, timeout: float = 30.0, label: str = "") -> str:
    """Download ``dest`` from the first of ``urls`` that yields bytes with ``sha256``; returns ``dest``.

    ``retries`` is how many times an interrupted transfer is resumed per URL. Raises
    :class:`ZooDownloadError` when no URL works; a partial ``.part`` is then kept for the next call
    (it is resumed), a ``.part`` with a wrong checksum is deleted.
    """
    label = label or os.path.basename(dest)
    part = dest + ".part"
    if not urls:
        raise ZooDownloadError(f"'{label}' has no URL to download from; cache: {dest}")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    with _file_lock(dest + ".lock"):
        if verify_file(dest, sha256, size) is None:  # another process finished it meanwhile
            return dest
        failures: List[Tuple[str, str]] = []
        for url in urls:
            fresh_retry_done = False
            attempt = 0
            while True:
                resumed = os.path.exists(part) and os.path.getsize(part) > 0
                before = os.path.getsize(part) if os.path.exists(part) else 0
                try:
                    _fetch(url, part, size, progress, timeout, label)
                except _TransferError as err:
                    after = os.path.getsize(part) if os.path.exists(part) else 0
                    if err.resumable and attempt < retries and (after > before or after == 0):
                        attempt += 1
                        continue
                    failures.append((url, err.reason))
                    break
                bad = verify_file(part, sha256, size)
                if bad is None:
                    os.replace(part, dest)
                    return dest
                os.remove(part)
                if resumed and not fresh_retry_done:  # the old partial bytes may be the culprit
                    fresh_retry_done = True
                    continue
                failures.append((url, f"checksum mismatch ({bad}); discarded"))
                break
        tried = "; ".join(f"{u}: {r}" for u, r in failures)
        kept = f"; partial download kept at {part} (rerun to resume)" if os.path.exists(part) else ""
        raise ZooDownloadError(f"could not download '{label}' from {len(urls)} URL(s) [{tried}]; "
                               f"nothing usable at {dest}{kept}; check the network, or put the file "
                               f"there by hand (sha256 {sha256})")


def fetch_entry(entry: ZooEntry, cache_dir: Optional[str] = None, progress: bool = True, force: bool = False,
                retries: int = 2, timeout: float = 30.0) -> str:
    """A verified local path for ``entry``: its in-repository file, else a (downloaded) cached copy.

    ``force`` re-downloads the cached copy even if it verifies.
    """
    problems = []
    local = entry.local_path
    if local is not None:
        bad = verify_file(local, entry.sha256, entry.size)
        if bad is None:
            return local
        problems.append(f"in-repository file {local}: {bad}")
        if not entry.urls:
            raise ZooDownloadError(f"zoo entry '{entry.name}': {problems[0]}, and the entry has no URL")
        warnings.warn(f"zoo entry '{entry.name}': {problems[0]}; downloading instead", stacklevel=2)
    dest = cached_path(entry, cache_dir)
    if os.path.exists(dest):
        bad = verify_file(dest, entry.sha256, entry.size)
        if bad is None and not force:
            return dest
        if bad is not None:
            warnings.warn(f"cached file {dest} is corrupt ({bad}); deleted, downloading again", stacklevel=2)
        os.remove(dest)
    return download_file(entry.urls, dest, entry.sha256, entry.size, progress=progress, retries=retries,
                         timeout=timeout, label=entry.name)


def entry_status(entry: ZooEntry, cache_dir: Optional[str] = None) -> List[Tuple[str, str, Optional[str]]]:
    """``(kind, path, problem)`` for every copy of ``entry`` on disk (kind: ``repo`` or ``cache``).

    ``problem`` is None for a verified file, ``"missing"`` or the mismatch otherwise; a cached copy
    that is absent is reported as ``"not downloaded"``.
    """
    out = []
    if entry.local_path is not None:
        out.append(("repo", entry.local_path, verify_file(entry.local_path, entry.sha256, entry.size)))
    dest = cached_path(entry, cache_dir)
    if os.path.exists(dest):
        out.append(("cache", dest, verify_file(dest, entry.sha256, entry.size)))
    elif entry.urls:
        out.append(("cache", dest, "not downloaded"))
    return out
