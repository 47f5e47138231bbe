"""One process per run folder: an exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, held for the run.

Two ``domainfm pretrain`` on one ``run_dir`` would both resume, interleave ``metrics.jsonl`` and delete each
other's checkpoint temp files; the second now stops in one line naming the holder's pid. The kernel drops the lock
when its process ends, however it ends, so a crashed run leaves no stale lock (the file and its pid stay, harmless).
On systems without ``fcntl`` there is no lock."""

from __future__ import annotations

import os
from pathlib import Path

from domainfm.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class RunLock:
    def __init__(self, run_dir: str | Path, what: str = "domainfm"):
        self.path = Path(run_dir) / ".lock"
        self.what = what
        self._file = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"{self.path.parent} is in use by {holder}: wait for it to finish, stop it, or give another run_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({self.what})")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
