"""Pre-trained weight download: `python -m monai.bundle download_large_files` puts a file at its path only
when it arrived complete and with the listed hash; the bundle's own large_files.yml lists public weights."""

import hashlib
import io
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET = "models/weights.pt"
WEIGHTS = {
    "swinViT.patch_embed.proj.weight": torch.randn(12, 1, 2, 2, 2),
    "swinViT.layers1.0.norm.weight": torch.ones(12),
}

_buffer = io.BytesIO()
torch.save(WEIGHTS, _buffer)
PAYLOAD = _buffer.getvalue()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class WeightServer(BaseHTTPRequestHandler):
    """``/weights.pt``: the payload; ``/interrupted``: announces the payload's length, sends half, closes."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path not in ("/weights.pt", "/interrupted"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD if self.path == "/weights.pt" else PAYLOAD[: len(PAYLOAD) // 2])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), WeightServer)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def download(bundle: Path, url: str, hash_val: str) -> subprocess.CompletedProcess:
    """Write a one-entry large_files.yml into ``bundle`` and run MONAI's downloader on it."""
    entry = {"path": TARGET, "url": url, "hash_val": hash_val, "hash_type": "sha256"}
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # straight to 127.0.0.1
    cmd = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def bundle_files(bundle: Path) -> list[str]:
    return sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))


def test_right_sha256_puts_the_weights_at_their_path_from_the_listed_url_only(tmp_path, server):
    proc = download(tmp_path, f"http://127.0.0.1:{server.server_port}/weights.pt", SHA256)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = torch.load(tmp_path / TARGET, weights_only=True)
    assert loaded.keys() == WEIGHTS.keys()
    assert all(torch.equal(loaded[k], WEIGHTS[k]) for k in WEIGHTS)
    assert server.requests == ["/weights.pt"]


def test_wrong_hash_fails_and_leaves_no_file_in_the_bundle(tmp_path, server):
    proc = download(tmp_path, f"http://127.0.0.1:{server.server_port}/weights.pt", "0" * 64)
    assert proc.returncode != 0
    assert "hash check of downloaded file failed" in proc.stderr
    assert bundle_files(tmp_path) == ["large_files.yml"]


@pytest.mark.parametrize("hash_val", [SHA256, ""], ids=["with_hash", "without_hash"])
def test_interrupted_transfer_fails_and_leaves_no_file_in_the_bundle(tmp_path, server, hash_val):
    proc = download(tmp_path, f"http://127.0.0.1:{server.server_port}/interrupted", hash_val)
    assert proc.returncode != 0
    assert "ContentTooShortError" in proc.stderr
    assert bundle_files(tmp_path) == ["large_files.yml"]


def test_repository_large_files_lists_https_weights_under_models():
    entries = yaml.safe_load((ROOT / "large_files.yml").read_text())["large_files"]
    assert entries
    digest_length = {"sha256": 64, "md5": 32}
    for entry in entries:
        assert entry["path"].startswith("models/"), entry
        assert entry["url"].startswith("https://"), entry
        if entry["hash_val"]:
            assert len(entry["hash_val"]) == digest_length[entry["hash_type"]], entry
