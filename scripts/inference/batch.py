"""The image list of a batch inference run: bad files are set aside and reported at the end.

A scanner export of hundreds of series should not be lost to one broken file: every image is read and
checked before the first is segmented, the bad ones are skipped with a warning, the good ones are
segmented, and the run then fails (non-zero exit) listing every skipped file. Mistakes that would
lose data fail at once: an output that would overwrite an input or another output.

DICOM: a folder holding one CT series is one input (converted to ``<output_dir>/dicom_images/<folder>.nii.gz``,
whose grid the segmentation then has); a folder of such folders is a batch; with ``dicom_seg`` each
segmentation is also written as a DICOM SEG (``<folder>_seg.dcm``) referencing the series. Other formats
(MetaImage, NRRD) are named as unsupported, with the command that converts them.
"""

from __future__ import annotations

import logging
import os

import torch

from scripts.atomic_files import check_writable
from scripts.dicom.series import holds_dicom, read_header, series_to_nifti
from scripts.errors import InputError, ReportedError, one_line
from scripts.inputs import NIFTI_SUFFIXES, Geometry, check_case, missing, nifti_files, read_datalist
from scripts.options import flag

logger = logging.getLogger(__name__)

UNSUPPORTED = {".mhd": "MetaImage", ".mha": "MetaImage", ".nrrd": "NRRD", ".nhdr": "NRRD"}
CONVERT_HINT = "convert with python -m scripts.tools.prepare"


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
        dicom_seg: bool = False,
        class_names=None,
        segment_types=None,
    ):
        self.output_dir, self.postfix, self.dicom_seg = output_dir, postfix, flag("dicom_seg", dicom_seg)
        # DICOM SEG segment names: the task's own classes (label value -> name), not BTCV's
        self.names = dict(enumerate(class_names)) if class_names else None
        self.segment_types = dict(segment_types or {})  # class name -> SNOMED CT keyword (codes.SCT)
        self.strays = []
        images = self._images(dataset_dir, datalist, key)
        self._refuse_overwrites(images, dataset_dir if not datalist else None, postfix)
        check_writable(output_dir)
        self.items, self.failed, self.dicom, self.done = [], [], {}, set()
        for stray in self.strays:
            self.failed.append(
                f"DICOM file {stray}: lies beside series folders; not segmented: move it into its series"
            )
            logger.warning(f"skipped, will not be segmented: {self.failed[-1]}")
        for image in images:
            try:
                image = self._nifti(image)
                check_case({"image": image}, ("image",), geometry=geometry)
            except Exception as e:  # any failure of one input (a damaged file no check foresaw) skips only it
                self.failed.append(str(e) if isinstance(e, InputError) else f"image {image}: {one_line(e)}")
                logger.warning(f"skipped, will not be segmented: {self.failed[-1]}")
            else:
                self.items.append({"image": image})
        self.total = len(images) + len(self.strays)
        if not self.items:
            self.finish()

    def _images(self, dataset_dir: str, datalist: str, key: str) -> list[str]:
        if datalist:
            items = read_datalist(datalist, key, dataset_dir, is_segmentation=False)
            if not items:
                raise InputError(f"datalist {datalist}: list '{key}' is empty")
            return [item["image"] if isinstance(item, dict) else item for item in items]
        if not os.path.isdir(dataset_dir):
            raise InputError(missing(dataset_dir, "dataset_dir"))
        folders, self.strays = dicom_folders(dataset_dir, exclude=self.output_dir)
        images = nifti_files(dataset_dir) + folders
        unsupported = sorted(p for p in os.listdir(dataset_dir) if os.path.splitext(p)[1].lower() in UNSUPPORTED)
        if not images:
            found = f"; found {len(unsupported)} unsupported files ({', '.join(unsupported[:3])}): {CONVERT_HINT}"
            raise InputError(
                f"dataset_dir {dataset_dir}: no NIfTI images (*.nii, *.nii.gz) or DICOM series folders"
                + (found if unsupported else "")
            )
        return images + [os.path.join(dataset_dir, p) for p in unsupported]

    def _nifti(self, image: str) -> str:
        """The NIfTI file to segment for ``image``: itself, or the conversion of a DICOM series folder."""
        suffix = os.path.splitext(image)[1].lower()
        if suffix in UNSUPPORTED:
            raise InputError(f"image {image}: unsupported format ({UNSUPPORTED[suffix]}); {CONVERT_HINT}")
        if not os.path.isdir(image):
            return image
        name = os.path.basename(os.path.normpath(image))
        converted = os.path.join(self.output_dir, "dicom_images", f"{name}.nii.gz")
        self.dicom[converted] = series_to_nifti(image, converted)
        return converted

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
                output = process(engine, batch)
            except Exception as e:  # any failure of this volume: it is reported, the others go on
                return self._record(f"image {_file_name(batch)}: {one_line(e)}")
            self.done.add(_file_name(batch))
            return output

        evaluator._process_function = one_volume
        return evaluator

    def _record(self, failure: str) -> dict:
        self.failed.append(failure)
        logger.warning(f"could not segment {failure}")
        return {}

    def finish(self) -> None:
        """Write the DICOM SEGs when asked; raise ``BatchInferenceError`` when any image was skipped (the
        workflow then exits non-zero)."""
        if self.dicom_seg:
            self._write_dicom_segs()
        if self.failed:
            done = self.total - len(self.failed)
            raise BatchInferenceError(
                f"{len(self.failed)} of {self.total} images could not be segmented"
                + (f" (the other {done} were written to {self.output_dir})" if done else "")
                + ":\n  "
                + "\n  ".join(self.failed)
            )

    def _write_dicom_segs(self) -> None:
        from scripts.dicom.extras import require

        require("highdicom", "DICOM SEG output (--dicom_seg true)")
        from scripts.dicom.seg import write_dicom_seg  # highdicom is imported only when DICOM SEG is asked for

        for converted, series in self.dicom.items():
            if converted not in self.done:
                continue  # its failure is already recorded
            labels = output_path(converted, self.output_dir, self.postfix)
            try:
                write_dicom_seg(
                    labels, series, labels[: -len(".nii.gz")] + ".dcm", names=self.names, types=self.segment_types
                )
            except Exception as e:  # one series' SEG failing leaves the others and the NIfTI maps
                self._record(f"DICOM SEG of {series.folder}: {one_line(e)}")


def dicom_folders(folder: str, exclude: str = "") -> tuple[list[str], list[str]]:
    """(inputs, stray files): ``[folder]`` when its own files are DICOM (one series), else its sub-folders holding
    DICOM files (except ``exclude``, an output folder inside the input folder). DICOM files lying beside such
    sub-folders are strays: reported, never merged with a series or made an input of their own."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    own = [e.path for e in entries if e.is_file() and read_header(e.path) is not None]
    skip = os.path.realpath(exclude) if exclude else None
    subfolders = [
        e.path
        for e in entries
        if e.is_dir() and not e.name.startswith(".") and os.path.realpath(e.path) != skip and holds_dicom(e.path)
    ]
    if own and not subfolders:
        return [folder], []
    return subfolders, own


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
