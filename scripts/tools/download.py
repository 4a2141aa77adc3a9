"""Download every file ``large_files.yml`` lists, each independently: one line per file, exit code 1 if any failed.

    python -m scripts.tools.download [--bundle_path .]

Each file goes through MONAI's ``download_url`` (as ``monai.bundle download_large_files`` does): fetched into a
temporary folder, its hash checked there, and only then moved to its path. Unlike that command, a failure is
one line (not a traceback) and the other files are still tried. A file already at its path is kept: checked
against the listed hash, and left alone (reported) when it differs, e.g. a model trained here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml
from monai.apps.utils import check_hash, download_url

from scripts.errors import install_error_hook, one_line


def download_listed(bundle_path: str = ".", large_file_name: str = "large_files.yml", out=print) -> int:
    """Download the listed files into ``bundle_path``; ``out`` gets one line per file. Returns the failure count."""
    listing = os.path.join(bundle_path, large_file_name)
    with open(listing) as f:
        entries = (yaml.safe_load(f) or {}).get("large_files") or []
    root = os.path.realpath(bundle_path)
    failed = 0
    for entry in entries:
        name = entry.get("path", "")
        target = os.path.realpath(os.path.join(root, name))
        hash_val, hash_type = entry.get("hash_val") or None, entry.get("hash_type") or "md5"
        if not name or os.path.commonpath([root, target]) != root:
            out(f"FAILED {name!r}: path outside the bundle")
            failed += 1
            continue
        if os.path.exists(target):
            if hash_val and not check_hash(target, hash_val, hash_type):
                out(f"KEPT   {name}: another file is there (not the listed {hash_type}); move it away to download")
            else:
                out(f"OK     {name}: already there{' (hash checked)' if hash_val else ''}")
            continue
        try:
            download_url(entry["url"], target, hash_val=hash_val, hash_type=hash_type, progress=False)
        except Exception as e:  # network, HTTP, hash and file-system errors alike: report and go on
            out(f"FAILED {name}: {one_line(e)} ({entry.get('url')})")
            failed += 1
            continue
        if not os.path.isfile(target):  # MONAI's download_url passes over permission errors silently
            out(f"FAILED {name}: not written to {target} (permission denied?)")
            failed += 1
            continue
        out(f"OK     {name}: downloaded{f' ({hash_type} checked)' if hash_val else ' (no published hash to check)'}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle_path", default=".")
    parser.add_argument("--large_file_name", default="large_files.yml")
    args = parser.parse_args(argv)
    # MONAI logs each failure with its own handler; the lines below say what happened to each file
    logging.getLogger("monai.apps").setLevel(logging.CRITICAL)
    failed = download_listed(args.bundle_path, args.large_file_name)
    if failed:
        print(f"ERROR: {failed} file(s) could not be downloaded (listed above); run again when the network is back")
    return 1 if failed else 0


if __name__ == "__main__":
    install_error_hook(command=True)
    sys.exit(main())
