"""vpr_ros_weights against a loopback HTTP server (never the internet) that behaves as the
publishers do: a Google Drive-style confirmation page before a large file, a Hugging Face-style
LFS pointer with the sha256, HTTP Range for resuming, and a connection that drops mid-file."""
from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.parse

import numpy as np
import pytest

from vpr_ros.errors import CheckpointError
from vpr_ros.weights_download import Release, fetch

DATA = np.random.default_rng(7).integers(0, 256, 3 * (1 << 20) + 123, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    drops = [1]  # the first request of /flaky ends half-way

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send_file(self, data: bytes, allow_drop: bool = False) -> None:
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if allow_drop and self.drops[0] and not start:
            self.drops[0] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if u.path == "/uc":  # Drive: "Google Drive can't scan this file for viruses" + a form
            page = (f'<html><body><form id="download-form" action="{host}/download" method="get">'
                    f'<input type="hidden" name="id" value="{q.get("id", "")}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="1234-abcd"></form></body></html>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif u.path == "/download" and q.get("confirm") == "t" and q.get("uuid") == "1234-abcd":
            self._send_file(DATA)
        elif u.path == "/file.safetensors":
            self._send_file(DATA)
        elif u.path == "/flaky.pth":
            self._send_file(DATA, allow_drop=True)
        elif u.path in ("/raw/good", "/raw/bad"):
            oid = SHA if u.path == "/raw/good" else "0" * 64
            text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(DATA)}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_a_drive_file_behind_its_confirmation_page_is_fetched_recorded_and_checked(server, tmp_path):
    rel = Release("t", f"{server}/uc?export=download&id=FILEID", "t.pth", "models/x.yaml", "test")
    got = fetch(rel, tmp_path)
    assert got.path.read_bytes() == DATA and got.sha256 == SHA and "recorded now" in got.check
    again = fetch(rel, tmp_path)  # present: no download, checked against the recorded hash
    assert "recorded at the first download" in again.check
    got.path.write_bytes(DATA[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="differs from .* recorded at its first download"):
        fetch(rel, tmp_path)


def test_a_hugging_face_file_is_checked_against_its_lfs_pointer(server, tmp_path):
    good = Release("hf", f"{server}/file.safetensors", "hf.safetensors", "", "test", hf_pointer=f"{server}/raw/good")
    assert "publisher's" in fetch(good, tmp_path).check
    bad = Release("hf2", f"{server}/file.safetensors", "hf2.safetensors", "", "test", hf_pointer=f"{server}/raw/bad")
    with pytest.raises(CheckpointError, match="is not the publisher's"):
        fetch(bad, tmp_path)
    assert (tmp_path / "hf2.safetensors.bad").is_file() and not (tmp_path / "hf2.safetensors").exists()


def test_a_dropped_download_resumes_where_it_stopped(server, tmp_path):
    rel = Release("f", f"{server}/flaky.pth", "f.pth", "", "test")
    with pytest.raises(CheckpointError, match="run again to resume"):
        fetch(rel, tmp_path)
    part = tmp_path / "f.pth.part"
    assert 0 < part.stat().st_size < len(DATA)
    got = fetch(rel, tmp_path)  # asks for the rest with Range
    assert got.path.read_bytes() == DATA and not part.exists()


def test_the_command_fetches_by_name_from_a_mirror_and_prints_the_params_line(server, tmp_path, capsys):
    from vpr_ros.cli.weights import main

    assert main(["get", "d2vpr", "--cache-dir", str(tmp_path), "--url", f"{server}/uc?export=download&id=X",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"model.weights: {tmp_path / 'd2vpr.pth'}" in out and "models/d2vpr_official.yaml" in out
    assert main(["get", "nonesuch", "--cache-dir", str(tmp_path)]) == 2
    assert main(["get", "dinov2_vits14", "--cache-dir", str(tmp_path), "--url", f"{server}/missing",
                 "--no-progress"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
