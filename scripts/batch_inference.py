"""The image list of a batch inference run: bad files are set aside and reported at the end.

A scanner export of hundreds of series should not be lost to one broken file: every image is read and
checked before the first is segmented, the bad ones are skipped with a warning, the good ones are
segmented, and the run then fails (non-zero exit) listing every skipped file. Mistakes that would
lose data fail at once: an output that would overwrite an input or another output.
"""

from __future__ import annotations

import logging
import os

import torch

from scripts.atomic_files import check_writable
from scripts.errors import InputError, ReportedError, one_line
from scripts.inputs import NIFTI_SUFFIXES, Geometry, check_case, nifti_files, read_datalist

logger = logging.getLogger(__name__)


class BatchInferenceError(ReportedError):
    """Some images of a batch could not be segmented."""


def output_path(image: str, output_dir: str, postfix: str = "seg", ext: str = ".nii.gz") -> str:
    """Where ``SaveImaged(output_dir, output_postfix=postfix, separate_folder=False)`` writes ``image``."""
    name = os.path.basename(image)
    for suffix in NIFTI_SUFFIXES[::-1]:  # ".nii.gz" before ".nii"
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(output_dir, f"{name}_{postfix}{ext}")


class InferenceBatch:
    """Images to segment: the ``key`` entries of ``datalist`` when given, else every NIfTI in ``dataset_dir``.

    ``items`` holds the images that passed the input checks; ``finish()`` raises ``BatchInferenceError``
    naming every image that did not (call it after the run, so that the good ones are written first).
    """

    def __init__(
        self,
        dataset_dir: str,
        datalist: str = "",
        key: str = "test",
        output_dir: str = "",
        postfix: str = "seg",
        geometry: Geometry | None = None,
    ):
        self.output_dir = output_dir
        images = self._images(dataset_dir, datalist, key)
        self._refuse_overwrites(images, dataset_dir if not datalist else None, postfix)
        check_writable(output_dir)
        self.items, self.failed = [], []
        for image in images:
            try:
                check_case({"image": image}, ("image",), geometry=geometry)
            except InputError as e:
                self.failed.append(str(e))
                logger.warning(f"skipped, will not be segmented: {e}")
            else:
                self.items.append({"image": image})
        self.total = len(images)
        if not self.items:
            self.finish()

    @staticmethod
    def _images(dataset_dir: str, datalist: str, key: str) -> list[str]:
        if datalist:
            items = read_datalist(datalist, key, dataset_dir, is_segmentation=False)
            if not items:
                raise InputError(f"datalist {datalist}: list '{key}' is empty")
            return [item["image"] if isinstance(item, dict) else item for item in items]
        if not os.path.isdir(dataset_dir):
            raise InputError(f"dataset_dir {dataset_dir}: folder not found")
        images = nifti_files(dataset_dir)
        if not images:
            raise InputError(f"dataset_dir {dataset_dir}: no NIfTI images (*.nii, *.nii.gz)")
        return images

    def _refuse_overwrites(self, images: list[str], input_folder: str | None, postfix: str) -> None:
        real = os.path.realpath
        if input_folder is not None and real(self.output_dir) == real(input_folder):
            raise InputError(
                f"output_dir {self.output_dir}: is the input folder; the segmentations would be taken "
                f"as inputs by the next run. Choose a separate output_dir"
            )
        inputs = {real(p): p for p in images}
        planned = {}
        for image in images:
            out = output_path(image, self.output_dir, postfix)
            if real(out) in inputs:
                raise InputError(
                    f"output {out}: would overwrite the input image {inputs[real(out)]}; choose another output_dir"
                )
            if real(out) in planned:
                raise InputError(
                    f"output {out}: images {planned[real(out)]} and {image} have the same file name "
                    f"and would overwrite each other's segmentation; rename one"
                )
            planned[real(out)] = image

    def guarded(self, transform):
        """``transform`` that, when it fails on an image, returns a placeholder naming the image and the
        failure instead of raising (it runs in data-loader workers, so the failure travels with the data)."""
        return _GuardedTransform(transform)

    def isolate(self, evaluator):
        """Make each volume's processing in ``evaluator`` (network, post-processing, writing) independent:
        a failure, or a placeholder from ``guarded``, is recorded with the file name and the run goes on."""
        process = evaluator._process_function  # ignite's per-iteration function (MONAI's _iteration)

        def one_volume(engine, batch):
            failed = batch.get(FAILED_KEY) if isinstance(batch, dict) else None
            if failed:
                return self._record(failed[0])
            try:
                return process(engine, batch)
            except Exception as e:  # any failure of this volume: it is reported, the others go on
                return self._record(f"image {_file_name(batch)}: {one_line(e)}")

        evaluator._process_function = one_volume
        return evaluator

    def _record(self, failure: str) -> dict:
        self.failed.append(failure)
        logger.warning(f"could not segment {failure}")
        return {}

    def finish(self) -> None:
        """Raise ``BatchInferenceError`` when any image was skipped (the workflow then exits non-zero)."""
        if self.failed:
            done = self.total - len(self.failed)
            raise BatchInferenceError(
                f"{len(self.failed)} of {self.total} images could not be segmented"
                + (f" (the other {done} were written to {self.output_dir})" if done else "")
                + ":\n  "
                + "\n  ".join(self.failed)
            )


FAILED_KEY = "segmentation_failed"


def _file_name(batch) -> str:
    try:
        image = batch["image"]
        name = image.meta["filename_or_obj"]
        return str(name[0] if isinstance(name, (list, tuple)) else name)
    except (KeyError, TypeError, AttributeError, IndexError):
        return "(unknown file)"


class _GuardedTransform:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, item: dict):
        try:
            return self.transform(item)
        except Exception as e:
            return {"image": torch.zeros(1, 1, 1, 1), FAILED_KEY: f"image {item.get('image')}: {one_line(e)}"}
