"""Atomic output files: written under a temporary name in the target folder, flushed, then renamed.

A process killed while writing leaves the previous file (or none) and at most a hidden temporary
file, never a truncated output that a later step would take for a complete one.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import tempfile

from monai.data import NibabelWriter

from scripts.errors import InputError

logger = logging.getLogger(__name__)


def _suffix(path: str) -> str:
    """The file's extension(s), kept on the temporary file so that writers pick the same format."""
    name = os.path.basename(path)
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file under this process's umask (0644 under the usual 022).

    Temporary files are created 0600; the final file gets this mode so that other users and services
    read outputs as they would read any other file written here.
    """
    try:  # Linux reports the umask without changing it (os.umask would, for every thread at once)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_FOLDERS = ("configs", "scripts", "tests", "docs", "bin", "models")


def refuse_bundle_folder(folder: str, what: str = "out_dir") -> str:
    """``folder``, unless it is the bundle root or one of its own folders (configs, scripts, models, ...): a tool's
    output there would replace the bundle's configs or its model. ConfigError in one line."""
    from scripts.errors import ConfigError

    real = os.path.realpath(folder)
    own = [os.path.realpath(BUNDLE_ROOT)] + [os.path.realpath(os.path.join(BUNDLE_ROOT, f)) for f in BUNDLE_FOLDERS]
    if any(real == o or (o != own[0] and real.startswith(o + os.sep)) for o in own):
        raise ConfigError(
            f"{what} {folder}: is the bundle's own folder; its files (configs, models) would be replaced: give a "
            f"folder of its own, e.g. under runs/"
        )
    return folder


def replaced_note(path: str) -> str:
    """``" (replaced an existing file)"`` when ``path`` exists, for tools that say what they overwrite."""
    return " (replaced an existing file)" if os.path.exists(path) else ""


def check_writable(folder: str, what: str = "output_dir", probe_bytes: int = 1 << 20) -> str:
    """Create ``folder`` and write (then remove) a probe file of ``probe_bytes`` there, so that an unwritable,
    full or misnamed output folder stops the run in one line before any work, not after the first result."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe.") as f:
            f.write(b"\0" * probe_bytes)
            f.flush()
            os.fsync(f.fileno())
    except FileExistsError:
        raise InputError(f"{what} {folder}: is a file, not a folder") from None
    except OSError as e:
        raise InputError(f"{what} {folder}: cannot write there ({e.strerror or e})") from None
    return folder


def append_csv_row(path: str, header: list, row: list) -> None:
    """Append one row to a CSV log (the header first when the file is new). Appends of whole rows are
    not atomic but lose nothing already written, which is what a log of a long run needs."""
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(header)
        writer.writerow(row)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path next to ``path``; on success it is synced and renamed to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial" + _suffix(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def stored_shape(meta: dict | None) -> tuple | None:
    """The array shape of the input file as its NIfTI header ``dim`` field records it (e.g. ``(x, y, z, 1)``)."""
    dim = (meta or {}).get("dim")
    try:
        ndim = int(dim[0])
        return tuple(int(d) for d in dim[1 : ndim + 1]) if 1 <= ndim <= 7 else None
    except (TypeError, IndexError, ValueError):
        return None


def _trimmed(shape) -> tuple:
    shape = tuple(shape)
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's NIfTI writer (for ``SaveImage(d)``'s ``writer``) writing each file atomically, in the input
    file's exact shape: MONAI drops trailing singleton dimensions, so a one-slice ``(x, y, 1)`` input would
    give a 2-D map and an ``(x, y, z, 1)`` input an ``(x, y, z)`` one; they are put back from the input's
    header (``dim``), which the inverted prediction carries."""

    def set_data_array(self, data_array, channel_dim=0, squeeze_end_dims: bool = True, **kwargs):
        self.squeeze_end_dims = squeeze_end_dims  # applied in write(), where the input's shape is known
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=False, **kwargs)

    def set_metadata(self, meta_dict=None, resample: bool = True, **options):
        self.input_shape = stored_shape(meta_dict)
        super().set_metadata(meta_dict, resample=resample, **options)

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        if verbose:
            logger.info(f"writing: {filename}")
        shape, data = getattr(self, "input_shape", None), self.data_obj
        if data is not None:
            if shape and _trimmed(data.shape) == _trimmed(shape):
                self.data_obj = data.reshape(shape)
            elif getattr(self, "squeeze_end_dims", True):
                self.data_obj = data.reshape(_trimmed(data.shape) or (1,))
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=False, **obj_kwargs)
