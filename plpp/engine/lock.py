"""One run per output folder: an exclusive lock held for the life of the process that writes there.

The lock is ``<folder>/run.lock``, a small JSON file naming the holder (PID, host, start time, command)
that is locked with ``flock`` while the run lives. The kernel drops an ``flock`` when its process ends,
however it ends (``kill -9`` included), so a lock file left by a dead run is taken over by the next
one, while a live holder makes every other start refuse at once with its PID. On systems without
``fcntl`` the holder's PID is checked instead. In a ``torchrun`` job only rank 0 takes the lock: the
ranks of one run are one run.
"""

from __future__ import annotations

import datetime
import json
import os
import os.path as osp
import socket
import sys

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = "run.lock"


class RunLockError(RuntimeError):
    """The output folder is in use by another live run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` — hold ``folder/run.lock`` or raise :class:`RunLockError` naming the holder."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = osp.join(folder, LOCK_FILE)
        self.fd: int | None = None
        self.previous: dict | None = None  # the stale holder whose lock was taken over, if any

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> RunLockError:
        who = f"PID {holder.get('pid', '?')}"
        if holder.get("host"):
            who += f" on {holder['host']}"
        since = f", started {holder['started']}" if holder.get("started") else ""
        return RunLockError(
            f"{self.folder} is in use by another run ({who}{since}; lock {self.path}). Wait for it to end, or "
            "use another --output-dir.")

    def acquire(self) -> RunLock:
        """Take the lock; a lock left by a process that is gone is taken over (and noted in ``previous``)."""
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_by_pid()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse(self._holder()) from None
            try:  # the holder may have removed the file between our open and flock: lock the current one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        self.previous = self._holder() or None
        self._write_holder()
        return self

    def _acquire_by_pid(self) -> RunLock:  # pragma: no cover - Windows
        holder = self._holder()
        pid = holder.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and holder.get("host") == socket.gethostname() \
                and _pid_alive(pid):
            raise self._refuse(holder)
        self.previous = holder or None
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write_holder()
        return self

    def _write_holder(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)}
        data = (json.dumps(record) + "\n").encode("utf-8")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            if osp.exists(self.path) and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.remove(self.path)
        finally:
            os.close(self.fd)
            self.fd = None
