"""Image lists for pre-training: merge several MSD-style datalists and folder globs into one list.

The paper pre-trains on five public collections, each with its own datalist and base folder; labels,
where a datalist has them, are not used.
"""

from __future__ import annotations

import glob
import logging
import os

from scripts.inputs import NIFTI_SUFFIXES, InputError, read_datalist

logger = logging.getLogger(__name__)


def _entries(source, default_key: str) -> tuple[str, list[str]]:
    """(description, image paths) of one source: a datalist JSON, a folder, a glob, or a dict."""
    if isinstance(source, dict):
        spec = dict(source)
        if "datalist" not in spec and "glob" not in spec:
            raise InputError(f"pre-training source {source}: needs a 'datalist' or a 'glob' entry")
    elif str(source).endswith(".json"):
        spec = {"datalist": str(source)}
    else:
        spec = {"glob": str(source)}
    if "datalist" in spec:
        path, key = spec["datalist"], spec.get("key", default_key)
        base_dir = spec.get("base_dir", os.path.dirname(os.path.abspath(path)))
        items = read_datalist(path, key, base_dir, is_segmentation=False)
        images = [item["image"] if isinstance(item, dict) else item for item in items]
        return f"{path} [{key}]", images
    pattern = spec["glob"]
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    images = sorted(p for p in glob.glob(pattern) if p.endswith(NIFTI_SUFFIXES))
    return pattern, images


def image_list(sources, key: str = "training") -> list[dict]:
    """``[{"image": path}, ...]`` from one source or a list of sources, in order, each file once.

    A source is a datalist JSON (its ``key`` list, paths relative to the JSON's folder), a folder or
    glob of NIfTI files, or a dict ``{"datalist": ..., "base_dir": ..., "key": ...}`` /
    ``{"glob": ...}``. Every listed file must exist; an empty source is an error, since a silently
    empty collection would skew the mix without notice.
    """
    if isinstance(sources, (str, dict)):
        sources = [sources]
    out, seen = [], set()
    for source in sources:
        name, images = _entries(source, key)
        if not images:
            raise InputError(f"pre-training source {name}: no images found")
        missing = [p for p in images if not os.path.isfile(p)]
        if missing:
            raise InputError(f"pre-training source {name}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
        new = [p for p in images if p not in seen]
        seen.update(new)
        out += [{"image": p} for p in new]
        logger.info(f"{name}: {len(new)} images")
    return out
