"""Image lists for pre-training: merge several MSD-style datalists and folder globs into one list.

The reference code pre-trains on five public collections, each with its own datalist and base folder; labels,
where a datalist has them, are not used. Among thousands of public volumes a few are always broken:
``usable_images`` skips those with a warning and stops the run only when too many are.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from monai.data import CacheDataset

from scripts.atomic_files import append_csv_row, atomic_path
from scripts.distributed import rank, world_size
from scripts.errors import InputError, one_line
from scripts.inputs import Geometry, check_case, nifti_files, read_datalist

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
    return spec["glob"], nifti_files(spec["glob"])


def image_list(sources, key: str = "training") -> list[dict]:
    """``[{"image": path}, ...]`` from one source or a list of sources, in order, each file once.

    A source is a datalist JSON (its ``key`` list, paths relative to the JSON's folder), a folder or
    glob of NIfTI files, or a dict ``{"datalist": ..., "base_dir": ..., "key": ...}`` /
    ``{"glob": ...}``. An empty source, or one none of whose files exists (a wrong base folder), is an
    error, since a silently empty collection would skew the mix without notice; single missing files,
    broken links and folders named like images are left to ``usable_images``, which skips them.
    """
    if isinstance(sources, (str, dict)):
        sources = [sources]
    out, seen = [], set()
    for source in sources:
        name, images = _entries(source, key)
        if not images:
            raise InputError(f"pre-training source {name}: no images found")
        if not any(os.path.isfile(p) for p in images):
            raise InputError(f"pre-training source {name}: none of its {len(images)} files exists, e.g. {images[0]}")
        new = [p for p in images if p not in seen]
        seen.update(new)
        out += [{"image": p} for p in new]
        logger.info(f"{name}: {len(new)} images")
    return out


def validation_images(sources, training: list[dict]) -> list[dict]:
    """``image_list(sources, "validation")``, with a warning when it shares volumes with ``training``.

    ``val_sources`` defaults to ``train_sources``: the ``validation`` lists of datalists (``prepare`` writes both
    lists); a folder or glob has no such list, so its volumes would be validated on as they are trained on.
    """
    images = image_list(sources, "validation")
    trained = {item["image"] for item in training}
    shared = sum(item["image"] in trained for item in images)
    if shared:
        logger.warning(
            f"{shared} of {len(images)} pre-training validation volumes are also training volumes (folders and globs "
            "have no validation list): validation then measures fit, not generalisation; give --val_sources"
        )
    return images


def _problems(item: dict, geometry: Geometry | None = None, content=None) -> tuple[str | None, list[str], bool]:
    """(error or None, warnings, whether the error is the content rule's) of one volume, read in full."""
    warnings = []
    try:
        loaded = check_case(item, ("image",), warnings=warnings, geometry=geometry)
    except InputError as e:
        return str(e), warnings, False
    if content is not None:
        img, data = loaded["image"]
        reason, notes = content.check(img.affine, data)
        warnings += [f"image {item['image']}: {note}" for note in notes]
        if reason:
            return f"image {item['image']}: {reason}", warnings, True
    return None, warnings, False


def _checked(items: list[dict], pool, geometry: Geometry | None = None, content=None):
    """(error, warnings, content rule) of every item, in order; under torch.distributed each rank reads its share."""
    problems = functools.partial(_problems, geometry=geometry, content=content)
    if world_size() == 1:
        yield from pool.map(problems, items)
        return
    share = dict(zip(range(rank(), len(items), world_size()), pool.map(problems, items[rank() :: world_size()])))
    shares = [None] * world_size()
    torch.distributed.all_gather_object(shares, share)
    merged = {i: result for s in shares for i, result in s.items()}
    yield from (merged[i] for i in range(len(items)))


def usable_images(
    items: list[dict],
    max_skipped_fraction: float = 0.05,
    num_threads: int = 4,
    report: str | None = None,
    geometry: Geometry | None = None,
    content=None,
) -> list[dict]:
    """The entries of ``items`` whose volume reads as one finite 3-D image with a usable ``geometry``
    (``scripts.inputs.Geometry``) and, with ``content`` (``scripts.pretraining.content.CropContent``), enough
    anatomy for a crop; the others are skipped.

    Every volume is read in full (a truncated file only fails on decompression) by ``num_threads``
    threads. Each skipped volume is logged with the running count; the run stops with an
    ``InputError`` as soon as more than ``max_skipped_fraction`` of the list is unreadable, since that
    points at a wrong folder or a broken copy rather than a few bad files; volumes skipped by the content rule
    (readable, but too thin or outside the HU window) do not count towards it, only an empty result stops.
    With ``report``, the skipped files and their problems are written there as CSV.
    """
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise ValueError(f"max_skipped_fraction must be in [0, 1], got {max_skipped_fraction}")
    total, skipped, kept, unreadable = len(items), [], [], 0
    progress_every = max(1, total // 10)
    speak = rank() == 0  # under torchrun every rank reaches the same verdicts; one of them reports
    with ThreadPoolExecutor(max(1, int(num_threads))) as pool:
        for i, (item, (error, warnings, by_content)) in enumerate(
            zip(items, _checked(items, pool, geometry, content)), 1
        ):
            for warning in warnings if speak else ():
                logger.warning(warning)
            if error is None:
                kept.append(item)
            else:
                skipped.append((item["image"], error))
                unreadable += not by_content
                if speak:
                    logger.warning(f"skipped {error} ({len(skipped)} skipped of {i} read, {total} listed)")
                if unreadable > max_skipped_fraction * total:
                    pool.shutdown(cancel_futures=True)
                    raise InputError(
                        f"{unreadable} of {total} pre-training volumes are unusable (more than "
                        f"max_skipped_fraction={max_skipped_fraction:g} of the list), e.g. {error}. Check the data "
                        f"(python -m scripts.tools.check_data) or raise max_skipped_fraction"
                    )
            if speak and (i % progress_every == 0 or i == total):
                logger.info(f"read {i} of {total} volumes, {len(skipped)} skipped")
    if not kept and total:
        raise InputError(f"none of the {total} pre-training volumes can be used, e.g. {skipped[0][1]}")
    if skipped and speak:
        if report:
            with atomic_path(report) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "problem"])
                writer.writerows(skipped)
        logger.warning(
            f"pre-training on {len(kept)} of {total} volumes: {len(skipped)} skipped"
            + (f", listed in {report}" if report else "")
        )
    return kept


class SkippingCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` for pre-training that skips a volume whose loading fails (any error of
    its transforms: resampling, memory, a reader error the checks could not foresee) instead of stopping.

    A failed volume is logged with its file and the reason, counted, and replaced by the next usable
    one of the list whenever it is drawn; more than ``max_skipped_fraction`` of the list failing stops
    the run, as in ``usable_images``. Failures while caching are also appended to ``report`` (CSV).
    """

    def __init__(self, *args, max_skipped_fraction: float = 0.05, report: str | None = None, **kwargs):
        self.max_skipped_fraction, self.report = max_skipped_fraction, report
        self.failed: dict[int, str] = {}
        super().__init__(*args, **kwargs)
        if len(self.failed) > self.max_skipped_fraction * max(len(self.data), 1):
            raise InputError(
                f"{len(self.failed)} of {len(self.data)} pre-training volumes failed to load (more than "
                f"max_skipped_fraction={self.max_skipped_fraction:g}), e.g. {next(iter(self.failed.values()))}"
            )

    def _skip(self, index: int, error: Exception) -> None:
        image = self.data[index].get("image") if isinstance(self.data[index], dict) else self.data[index]
        self.failed[index] = f"image {image}: failed to load ({one_line(error)})"
        logger.warning(f"skipped {self.failed[index]} ({len(self.failed)} skipped of {len(self.data)})")
        if self.report and rank() == 0:
            append_csv_row(self.report, ["image", "problem"], [image, self.failed[index]])

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as e:  # one volume: skipped and counted, the others are cached
            self._skip(idx, e)
            return None

    def _transform(self, index: int):
        for step in range(len(self.data)):
            candidate = (index + step) % len(self.data)
            if candidate in self.failed:
                continue
            try:
                return super()._transform(candidate)
            except Exception as e:  # loaded on the fly (cache_rate < 1): skipped from now on in this process
                self._skip(candidate, e)
        raise InputError(f"none of the {len(self.data)} pre-training volumes could be loaded")
