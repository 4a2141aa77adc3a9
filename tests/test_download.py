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


# --- the bundle's own downloader and the model zoo's BTCV model -------------------------------------------------

ZOO_URL = (
    "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/"
    "model_swin_unetr_btcv_segmentation_v1.pt"
)


def repository_listing() -> dict:
    return yaml.safe_load((ROOT / "large_files.yml").read_text())


def test_the_zoo_btcv_model_is_listed_as_models_model_pt_with_legacy_merging():
    listing = repository_listing()
    entry = next(e for e in listing["large_files"] if e["path"] == "models/model.pt")
    assert entry["url"] == ZOO_URL
    assert (entry["hash_val"], entry["hash_type"]) == ("50dd67a01b28a1d5487fd9ac27e682fb", "md5")
    assert listing["legacy_patch_merging"] == ["models/model.pt"]


def run_downloader(bundle: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "scripts.tools.download", "--bundle_path", str(bundle)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=bundle)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_offline_every_file_is_tried_and_reported_on_one_line(tmp_path, server):
    """Nothing listens on the first URL (as offline), the second file is there: both tried, exit 1, no traceback."""
    dead = f"http://127.0.0.1:{free_port()}/model.pt"
    entries = [
        {"path": "models/model.pt", "url": dead, "hash_val": "", "hash_type": ""},
        {"path": TARGET, "url": f"http://127.0.0.1:{server.server_port}/weights.pt", "hash_val": SHA256},
        {"path": "models/other.pt", "url": f"http://127.0.0.1:{server.server_port}/missing", "hash_val": ""},
    ]
    for entry in entries[1:]:
        entry["hash_type"] = "sha256"
    (tmp_path / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    proc = run_downloader(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["FAILED", "models/model.pt:"],
        ["OK", f"{TARGET}:"],
        ["FAILED", "models/other.pt:"],
    ], proc.stdout
    assert "refused" in lines[0].lower() and "404" in lines[2], proc.stdout
    assert lines[3].startswith("ERROR: 2 file(s) could not be downloaded")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert bundle_files(tmp_path) == ["large_files.yml", "models", TARGET]
    assert server.requests == ["/weights.pt", "/missing"]


def stand_in_bundle(tmp_path, port: int) -> tuple[Path, bytes]:
    """The repository's large_files.yml with the zoo model served by a stand-in from 127.0.0.1 (its own md5)."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(SwinUNETR(in_channels=1, out_channels=14, feature_size=12).state_dict(), buffer)
    payload = buffer.getvalue()
    listing = repository_listing()
    entry = next(e for e in listing["large_files"] if e["path"] == "models/model.pt")
    entry.update(url=f"http://127.0.0.1:{port}/model.pt", hash_val=hashlib.md5(payload).hexdigest())
    listing["large_files"] = [entry]
    (tmp_path / "large_files.yml").write_text(yaml.safe_dump(listing))
    return tmp_path, payload


def inference_downsample(bundle: Path):
    """The patch merging inference.json builds for <bundle>/models/model.pt, as any run or MONAI Label does."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def#downsample")


def test_the_downloaded_zoo_model_gets_the_legacy_merging_and_a_changed_file_does_not(tmp_path, monkeypatch):
    from scripts.tools.download import download_listed
    from scripts.weights.legacy_merging import LegacyPatchMerging

    for name in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(name)  # straight to 127.0.0.1

    class ZooServer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ZooServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        bundle, payload = stand_in_bundle(tmp_path, httpd.server_port)
        lines = []
        failed = download_listed(str(bundle), out=lines.append)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert failed == 0, lines
    assert (bundle / "models" / "model.pt").read_bytes() == payload
    assert inference_downsample(bundle) is LegacyPatchMerging
    # trained further here (another md5): built as trained, with MONAI's current order
    (bundle / "models" / "model.pt").write_bytes(payload + b"\0")
    assert inference_downsample(bundle) == "merging"
    # already there with the listed hash: kept, not fetched again
    (bundle / "models" / "model.pt").write_bytes(payload)
    lines.clear()
    assert download_listed(str(bundle), out=lines.append) == 0
    assert lines == ["OK     models/model.pt: already there (hash checked)"]
