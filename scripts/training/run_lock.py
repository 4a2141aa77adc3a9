"""A training run owns its output folder: a second run on the same folder is refused at start-up.

Two runs writing checkpoints into one folder interleave them, resume each other's files and delete
each other's; the lock file ``<output_dir>/.run.lock`` (pid, host, start time) prevents it. A lock
left by a process that no longer runs on this host (killed, machine rebooted) is taken over with a
warning.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time

from scripts.atomic_files import check_writable
from scripts.errors import ReportedError

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"


class FolderInUseError(ReportedError, RuntimeError):
    """Another run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """``acquire()`` the lock of ``folder`` (created if need be) or raise ``FolderInUseError``; ``release()``
    removes it (also done at interpreter exit, so a run that fails still leaves the folder free)."""

    def __init__(self, folder: str):
        self.folder = str(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.held = False

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):  # being written, or damaged: treat as held by an unknown run
            return {}

    def acquire(self) -> RunLock:
        check_writable(self.folder)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and pid == me["pid"]:  # this process again (a notebook, a server)
                    self.held = True
                    return self
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    logger.warning(f"{self.path}: taking over the lock of process {pid}, which no longer runs")
                    os.remove(self.path)
                    continue
                raise FolderInUseError(
                    f"output_dir {self.folder} is in use by another run (pid {pid} on {host}, since "
                    f"{holder.get('started')}): wait for it, choose another --output_dir, or delete {self.path} "
                    f"if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return self
        raise FolderInUseError(f"output_dir {self.folder}: could not take its lock {self.path}")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False
