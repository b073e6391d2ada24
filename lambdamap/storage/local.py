"""A folder as the object store: the embedded default, no account, no network."""
from __future__ import annotations

import itertools
import os
import shutil

from .base import Storage


class LocalStorage(Storage):
    """Blobs as files below ``root``; keys map to relative paths.

    Writes go to a temporary file in the same folder and are then renamed (``os.replace``) or,
    for ``if_absent``, hard-linked (``os.link`` fails if the target exists): both are atomic on
    POSIX file systems. Nothing is fsync'ed: the data is a job's scratch space, not a database.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self._made_dirs: set[str] = set()
        self._tmp_names = itertools.count()  # next() on a count is atomic: safe across threads

    def __repr__(self) -> str:
        return f"LocalStorage({self.root!r})"

    def _path(self, key: str) -> str:
        if key.startswith("/") or (".." in key and ".." in key.split("/")):
            raise ValueError(f"invalid storage key {key!r}")
        return os.path.join(self.root, key)

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        folder = os.path.dirname(path)
        if folder not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(folder)
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{id(self)}-{next(self._tmp_names)}")
        with open(tmp, "wb") as f:
            f.write(data)
        if not if_absent:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if byte_range is None:
                    return f.read()
                start, end = byte_range
                f.seek(start)
                return f.read(end - start)
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        # Walk only the folder that holds the prefix; keys are relative paths with "/".
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = os.path.join(self.root, base) if base else self.root
        keys = []
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = rel + name
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append(key)
        keys.sort()
        return keys

    def delete(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
        # Remove the folders the prefix owned outright, so that nothing is left behind.
        if prefix.endswith("/") and os.path.isdir(self._path(prefix.rstrip("/"))):
            shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)
        self._made_dirs.clear()
        return len(keys)

    def spec(self) -> dict:
        return {"type": "local", "root": self.root}
