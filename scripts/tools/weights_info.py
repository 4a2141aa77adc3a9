"""Print what a weight file is: its format, its record (``scripts.weights.record``) and, for files written
elsewhere, what its tensors tell (sizes, window, channels) and which patch-merging order it will be run with.

    python -m scripts.tools.weights_info models/model.pt
    python -m scripts.tools.weights_info models/model_swinvit.pt --as_json true
"""

from __future__ import annotations

import json
import os

import fire

from scripts.errors import install_error_hook
from scripts.options import flag
from scripts.weights.formats import read_weights, to_swinunetr_names
from scripts.weights.loading import trained_merging_order
from scripts.weights.record import inferred_network, sha256


def describe(path: str) -> dict:
    """The file's format, record, inferred network and the merging order the workflows will use, with why."""
    tensors, fmt, record = read_weights(path)
    order, why = trained_merging_order(path, fmt)
    return {
        "path": os.path.abspath(path),
        "size_mb": round(os.path.getsize(path) / 2**20, 1),
        "sha256": sha256(path),
        "format": fmt,
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "patch_merging": order,
        "patch_merging_reason": why,
        "inferred_network": inferred_network(to_swinunetr_names(tensors, fmt)),
        "record": record,
    }


def _lines(info: dict) -> list[str]:
    record = info["record"] or {}
    net = record.get("network") or info["inferred_network"]
    lines = [
        f"file: {info['path']} ({info['size_mb']} MB, sha256 {info['sha256'][:16]}...)",
        f"format: {info['format']}, {info['tensors']} tensors, {info['parameters']:,} parameters",
        f"patch merging: {info['patch_merging']} ({info['patch_merging_reason']})",
    ]
    if not record:
        lines.append("record: none (not written by this bundle); network inferred from the tensors:")
    else:
        bundle = record.get("bundle") or {}
        lines.append(f"record: {record.get('kind')} written by {bundle.get('name')} {bundle.get('version')}")
    lines.append("  network: " + ", ".join(f"{k} {v}" for k, v in net.items() if v is not None))
    for section in ("data", "source", "run", "progress"):
        value = record.get(section)
        if value:
            lines.append(f"  {section}: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in value.items()))
    return lines


def print_info(path: str, as_json=False) -> None:
    """Print the description of the weight file at ``path`` (as JSON with ``--as_json true``)."""
    info = describe(path)
    print(json.dumps(info, indent=2) if flag("as_json", as_json) else "\n".join(_lines(info)))


if __name__ == "__main__":
    install_error_hook(command=True)
    fire.Fire(print_info)
