"""Zoo downloads against a real HTTP server on 127.0.0.1 (started here): resume, mirrors, checksums."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading

import pytest

from harl.zoo.download import (
    cache_root, cached_path, download_file, entry_status, fetch_entry, sha256_file, verify_file,
)
from harl.errors import ZooDownloadError
from harl.zoo.manifest import ZooEntry

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_001))  # not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        name = self.path.lstrip("/")
        if name not in srv.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files[name]
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        cut = srv.truncate.get(name)
        if cut is not None and srv.truncations_left != 0:
            srv.truncations_left -= 1
            body = body[: int(len(body) * cut)]  # promise everything, send a part, hang up
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {"good.bin": PAYLOAD, "bad.bin": PAYLOAD[:-1] + b"\x00"}
    srv.truncate = {}
    srv.truncations_left = -1  # -1: every response of a truncated file
    srv.honour_range = True
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/good.bin"


def _entry(tmp_path, urls, file=None, sha=SHA, size=len(PAYLOAD)):
    return ZooEntry(name="tiny", method="byol", backbone="resnet18", dataset="fashion_scenes", epochs=1,
                    config={}, metrics={"linear_top1": None, "knn_top1": None}, size=size, sha256=sha,
                    license="MIT", file=file, urls=list(urls), root=str(tmp_path))


def test_sha256_and_verify(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(PAYLOAD)
    assert sha256_file(str(p)) == SHA
    assert verify_file(str(p), SHA, len(PAYLOAD)) is None
    assert "size" in verify_file(str(p), SHA, len(PAYLOAD) + 1)
    assert "sha256" in verify_file(str(p), "0" * 64, len(PAYLOAD))
    assert verify_file(str(tmp_path / "nope"), SHA) == "missing"
    lfs = tmp_path / "lfs"
    lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    assert "git lfs pull" in verify_file(str(lfs), SHA, len(PAYLOAD))


def test_download_verifies_and_renames(server, tmp_path):
    dest = str(tmp_path / "c" / "f.bin")
    assert download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False) == dest
    with open(dest, "rb") as f:
        assert f.read() == PAYLOAD
    assert not os.path.exists(dest + ".part")
    # a second call finds the verified file and does not touch the network
    n = len(server.requests)
    download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert len(server.requests) == n


def test_truncated_response_is_resumed_with_range(server, tmp_path):
    server.truncate["good.bin"] = 0.4
    server.truncations_left = 1  # only the first response is cut
    dest = str(tmp_path / "f.bin")
    download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None
    first_cut = int(len(PAYLOAD) * 0.4)
    assert server.requests == [("/good.bin", None), ("/good.bin", f"bytes={first_cut}-")]


def test_always_truncated_fails_keeps_part_then_resumes(server, tmp_path):
    server.truncate["good.bin"] = 0.5
    dest = str(tmp_path / "f.bin")
    with pytest.raises(ZooDownloadError) as exc:
        download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False, retries=1)
    msg = str(exc.value)
    assert "\n" not in msg and server.url("good.bin") in msg and dest in msg and "connection closed" in msg
    assert not os.path.exists(dest)  # never a partial file under the final name
    part = dest + ".part"
    have = os.path.getsize(part)
    assert have == int(len(PAYLOAD) * 0.5) + int((len(PAYLOAD) - int(len(PAYLOAD) * 0.5)) * 0.5)
    with open(part, "rb") as f:
        assert f.read() == PAYLOAD[:have]  # what is kept is a true prefix
    server.truncate.clear()  # the network recovers: the next call resumes from the partial file
    server.requests.clear()
    download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert server.requests == [("/good.bin", f"bytes={have}-")]
    assert verify_file(dest, SHA, len(PAYLOAD)) is None and not os.path.exists(part)


def test_wrong_checksum_never_lands_and_is_deleted(server, tmp_path):
    dest = str(tmp_path / "f.bin")
    with pytest.raises(ZooDownloadError, match="checksum mismatch"):
        download_file([server.url("bad.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")


def test_mirrors_tried_in_order(server, tmp_path):
    dest = str(tmp_path / "f.bin")
    urls = [_closed_port_url(), server.url("missing.bin"), server.url("bad.bin"), server.url("good.bin")]
    download_file(urls, dest, SHA, len(PAYLOAD), progress=False)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None
    assert [p for p, _ in server.requests] == ["/missing.bin", "/bad.bin", "/good.bin"]


def test_partial_from_one_mirror_resumed_from_the_next(server, tmp_path):
    server.files["cut.bin"] = PAYLOAD
    server.truncate["cut.bin"] = 0.3
    dest = str(tmp_path / "f.bin")
    download_file([server.url("cut.bin"), server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False,
                  retries=0)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None
    assert server.requests[-1] == ("/good.bin", f"bytes={int(len(PAYLOAD) * 0.3)}-")


def test_stale_partial_with_wrong_bytes_is_restarted(server, tmp_path):
    dest = str(tmp_path / "f.bin")
    with open(dest + ".part", "wb") as f:
        f.write(b"\xff" * 1000)  # garbage left by some earlier run
    download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None
    assert server.requests == [("/good.bin", "bytes=1000-"), ("/good.bin", None)]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    dest = str(tmp_path / "f.bin")
    with open(dest + ".part", "wb") as f:
        f.write(PAYLOAD[:5000])
    download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None


def test_offline_error_is_one_line_naming_urls_and_cache(tmp_path):
    urls = [_closed_port_url(), _closed_port_url().replace("good", "mirror")]
    entry = _entry(tmp_path, urls)
    with pytest.raises(ZooDownloadError) as exc:
        fetch_entry(entry, cache_dir=str(tmp_path / "cache"), progress=False, timeout=5)
    msg = str(exc.value)
    assert "\n" not in msg
    assert all(u in msg for u in urls) and "connection refused" in msg
    assert cached_path(entry, str(tmp_path / "cache")) in msg
    assert not os.path.exists(cached_path(entry, str(tmp_path / "cache")))


def test_cache_dir_env_and_entry_layout(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HARL_CACHE", str(tmp_path / "envcache"))
    assert cache_root() == str(tmp_path / "envcache")
    assert cache_root(str(tmp_path / "x")) == str(tmp_path / "x")
    monkeypatch.delenv("HARL_CACHE")
    assert cache_root() == os.path.expanduser(os.path.join("~", ".cache", "harl"))
    monkeypatch.setenv("HARL_CACHE", str(tmp_path / "envcache"))
    entry = _entry(tmp_path, [server.url("good.bin")])
    path = fetch_entry(entry, progress=False)
    assert path == str(tmp_path / "envcache" / "zoo" / f"tiny-{SHA[:12]}.safetensors")
    assert verify_file(path, SHA) is None


def test_corrupt_cached_file_is_replaced(server, tmp_path):
    entry = _entry(tmp_path, [server.url("good.bin")])
    cache = str(tmp_path / "cache")
    path = fetch_entry(entry, cache_dir=cache, progress=False)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    assert any(p for _, _, p in entry_status(entry, cache))
    with pytest.warns(UserWarning, match="corrupt"):
        again = fetch_entry(entry, cache_dir=cache, progress=False)
    assert again == path and verify_file(path, SHA, len(PAYLOAD)) is None


def test_repo_file_is_verified(server, tmp_path):
    (tmp_path / "weights").mkdir()
    local = tmp_path / "weights" / "tiny.safetensors"
    local.write_bytes(PAYLOAD)
    entry = _entry(tmp_path, [], file="weights/tiny.safetensors")
    assert fetch_entry(entry, cache_dir=str(tmp_path / "c"), progress=False) == str(local)
    assert server.requests == []  # offline: the repository copy is enough
    local.write_bytes(PAYLOAD[:-5])
    with pytest.raises(ZooDownloadError, match="in-repository file .* size"):
        fetch_entry(entry, cache_dir=str(tmp_path / "c"), progress=False)
    entry.urls = [server.url("good.bin")]  # with a URL it falls back to a verified download
    with pytest.warns(UserWarning, match="downloading instead"):
        path = fetch_entry(entry, cache_dir=str(tmp_path / "c"), progress=False)
    assert path == cached_path(entry, str(tmp_path / "c")) and verify_file(path, SHA) is None


def test_file_url_mirror(tmp_path):
    src = tmp_path / "mirror" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    dest = str(tmp_path / "f.bin")
    download_file([src.as_uri()], dest, SHA, len(PAYLOAD), progress=False)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None


def test_progress_bar_writes_to_stderr(server, tmp_path, capfd):
    download_file([server.url("good.bin")], str(tmp_path / "f.bin"), SHA, len(PAYLOAD), progress=True, label="tiny")
    err = capfd.readouterr().err
    assert "tiny" in err


def test_cli_download_and_offline_error(server, tmp_path, monkeypatch, capsys):
    import yaml

    from harl.cli.zoo import main

    entry = _entry(tmp_path, [server.url("good.bin")]).to_dict()
    offline = dict(entry, name="offline", urls=[_closed_port_url()])
    man = tmp_path / "manifest.yaml"
    man.write_text(yaml.safe_dump({"version": 1, "entries": [entry, offline]}))
    monkeypatch.setenv("HARL_ZOO_MANIFEST", str(man))
    cache = str(tmp_path / "cache")
    assert main(["download", "tiny", "--cache-dir", cache, "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith(f"tiny-{SHA[:12]}.safetensors") and verify_file(out, SHA) is None
    assert main(["download", "offline", "--cache-dir", cache, "--no-progress", "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: could not download 'offline'")
    assert "connection refused" in err and cache in err
    assert main(["download", "tin", "--cache-dir", cache]) == 2
    assert "did you mean 'tiny'" in capsys.readouterr().err
    # verify: the cached copy is OK (after the README is generated); corrupting it makes verify fail
    assert main(["verify", "tiny", "--cache-dir", cache]) == 1
    assert "STALE" in capsys.readouterr().out
    assert main(["readme"]) == 0 and (tmp_path / "README.md").is_file()
    assert main(["verify", "tiny", "--cache-dir", cache]) == 0
    text = capsys.readouterr().out
    assert f"OK       tiny [cache] {out}" in text
    with open(out, "r+b") as f:
        f.write(b"\x00\x00\x00")
    assert main(["verify", "tiny", "--cache-dir", cache]) == 1
    assert "CORRUPT  tiny [cache]" in capsys.readouterr().out


def test_wrong_content_range_restarts_without_range(server, tmp_path):
    class Liar(_Handler):
        def do_GET(self):  # noqa: N802 - answers any Range with bytes from 0
            if self.headers.get("Range"):
                self.server.requests.append((self.path, self.headers.get("Range")))
                body = PAYLOAD
                self.send_response(206)
                self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
                return
            super().do_GET()

    server.RequestHandlerClass = Liar
    dest = str(tmp_path / "f.bin")
    with open(dest + ".part", "wb") as f:
        f.write(PAYLOAD[:777])
    download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert verify_file(dest, SHA, len(PAYLOAD)) is None
    assert server.requests == [("/good.bin", "bytes=777-"), ("/good.bin", None)]


def test_oversized_body_stops_at_the_manifest_size(server, tmp_path):
    """A server streaming an endless body (no Content-Length): the download stops one byte past the
    manifest's size instead of reading forever, and nothing is left behind."""
    sent = {"bytes": 0}

    class Endless(_Handler):
        protocol_version = "HTTP/1.0"  # body delimited by closing the connection

        def do_GET(self):  # noqa: N802
            self.server.requests.append((self.path, self.headers.get("Range")))
            self.send_response(200)
            self.end_headers()
            block = PAYLOAD[:65536]
            try:
                for _ in range(100_000):  # 6.5 GB if nobody stops reading
                    self.wfile.write(block)
                    sent["bytes"] += len(block)
            except OSError:
                pass

    server.RequestHandlerClass = Endless
    dest = str(tmp_path / "f.bin")
    with pytest.raises(ZooDownloadError, match=f"more than the manifest's {len(PAYLOAD)} bytes"):
        download_file([server.url("good.bin")], dest, SHA, len(PAYLOAD), progress=False, timeout=10)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    assert len(server.requests) == 1  # not retried: a longer file is not a transfer hiccup
    # the server could push at most what fits in the socket buffers past what was read
    assert sent["bytes"] < 64 * len(PAYLOAD)


def test_announced_oversized_body_is_refused_before_reading(server, tmp_path):
    server.files["big.bin"] = PAYLOAD * 20
    dest = str(tmp_path / "f.bin")
    with pytest.raises(ZooDownloadError, match=f"announces {20 * len(PAYLOAD)} bytes, the manifest says"):
        download_file([server.url("big.bin")], dest, SHA, len(PAYLOAD), progress=False)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
