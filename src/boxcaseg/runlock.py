"""Guards for long jobs that write to one ``--out``: an advisory lock and input fingerprints.

* :class:`OutputLock`: ``<out>.lock`` holds the owner's pid, host and start time. A second
  run on the same output is refused with a message naming the holder; a lock left by a dead
  process on this host (kill -9, power loss) is taken over with a warning. Locks of other
  hosts are never broken automatically (their pid means nothing here): the message says
  which file to delete.
* :func:`file_fingerprint` / :func:`config_fingerprint`: content hashes that a resumable
  job stores in its progress file, so ``--resume`` binds to the exact input and config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from boxcaseg.errors import DataError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class OutputLockedError(DataError):
    """Another live run holds the lock on this output."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """``with OutputLock(out_path): ...``: exclusive use of ``out_path`` by this process.

    The lock file is created with ``O_EXCL`` (atomic on local and NFSv3+ file systems), so two
    runs started at the same instant cannot both win.
    """

    def __init__(self, out_path: str | os.PathLike, command: str = "boxcaseg"):
        self.out_path = Path(out_path)
        self.path = self.out_path.with_name(self.out_path.name + LOCK_SUFFIX)
        self.command = command
        self._held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    raise OutputLockedError(
                        f"{self.path}: lock file exists but is unreadable (delete it if no "
                        "other run writes to this output)") from None
                same_host = holder.get("host") == me["host"]
                pid = int(holder.get("pid", -1))
                if same_host and not _pid_alive(pid):
                    log.warning("%s: taking over a stale lock of pid %d (process is gone)",
                                self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise OutputLockedError(
                    f"{self.out_path}: in use by {holder.get('command', '?')} pid {pid} on "
                    f"{holder.get('host', '?')} since {holder.get('started', '?')} (wait for it, "
                    f"choose another --out, or delete {self.path} if that run is dead)") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._held = True
            return
        raise OutputLockedError(f"{self.path}: could not take the lock (another run raced us)")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file's bytes (streamed: flat memory for multi-GB JSON)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


def config_fingerprint(obj: Any) -> str:
    """``sha256:<hex>`` of a JSON-able config (keys sorted, so dict order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()
