"""One folder of a local disk or an object store, seen through fsspec, with the few operations the
pipeline needs and the retry policy it relies on.

Why a wrapper and not fsspec directly: object stores fail transiently (throttling, resets, 5xx)
and a batch job of millions of requests meets every one of those, so every call goes through
``retrying``; and a job must never overwrite an object it did not create in this attempt, so
``write_once`` refuses to replace anything. Errors that retrying cannot fix (no such bucket,
access denied, disk full, bad credentials) surface at once as a ``StorageError`` naming the URL,
never the credentials.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec

from codec.errors import CallicError

log = logging.getLogger(__name__)
T = TypeVar("T")

# OSError numbers that no retry can fix.
_PERMANENT_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}
_PERMANENT_TYPES = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
    TypeError,
    KeyError,
)


class StorageError(CallicError):
    """A storage operation failed for good (after retries, or at once when retrying cannot help)."""

    exit_code = 7


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` can help: network trouble, throttling and server errors can;
    missing objects, refused access, full disks and bad arguments cannot."""
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNO:
        return False
    text = f"{type(exc).__name__} {exc}"
    if any(s in text for s in ("NoCredentialsError", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket")):
        return False
    return isinstance(exc, OSError | ConnectionError | TimeoutError) or "botocore" in type(exc).__module__


@dataclass
class RetryPolicy:
    attempts: int = 5
    first_delay_s: float = 0.2
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so that many workers do not retry in step."""
        return random.uniform(0, min(self.max_delay_s, self.first_delay_s * 2**attempt))


def retrying(what: str, fn: Callable[[], T], policy: RetryPolicy) -> T:
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts - 1:
                raise
            delay = policy.delay(attempt)
            log.warning("retrying %s in %.2f s after %s: %s", what, delay, type(exc).__name__, exc)
            time.sleep(delay)
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    """``url`` without any user:password part, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def join(*parts: str) -> str:
    return posixpath.join(*[p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p])


@dataclass
class Store:
    """The folder ``url`` (local path or fsspec URL) and how to reach it. ``options`` are fsspec
    storage options (endpoint, credentials...): they travel to the workers with the store but are
    never written to the job folder or a log."""

    url: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        url = str(self.url)
        # A local path is made absolute: job specs and workers must not depend on the cwd.
        self.url = (url if "://" in url else os.path.abspath(os.path.expanduser(url))).rstrip("/") or "/"
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:
        # The fsspec instance holds sockets and event loops: each process makes its own.
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.options)
            except Exception as exc:
                raise StorageError(f"cannot open {redact(self.url)}: {type(exc).__name__}: {exc}") from exc
        return self._fs

    @property
    def root(self) -> str:
        self.fs  # noqa: B018 - resolves the root
        return self._root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def path(self, key: str) -> str:
        return join(self.root, key) if key else self.root

    def child(self, key: str) -> Store:
        """The store of the sub-folder ``key``."""
        return Store(join(self.url, key), self.options, self.policy)

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return retrying(f"{what} {redact(self.url)}/{key}", fn, self.policy)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(f"{what} {redact(self.url)}/{key} failed: {type(exc).__name__}: {exc}") from exc

    def read(self, key: str) -> bytes:
        return self._call("read", key, lambda: self.fs.cat_file(self.path(key)))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        data = self._call("read", key, lambda: self.fs.cat_file(self.path(key), start=start, end=start + length))
        if len(data) != length:
            raise StorageError(f"{redact(self.url)}/{key}: asked for {length} bytes at {start}, got {len(data)}")
        return data

    def exists(self, key: str) -> bool:
        return self._call("check", key, lambda: self.fs.exists(self.path(key)))

    def size(self, key: str) -> int:
        return int(self._call("stat", key, lambda: self.fs.size(self.path(key))))

    def list(self, prefix: str = "") -> list[str]:
        """Keys of the files under ``prefix`` (recursively), relative to this store, sorted."""
        base = self.path(prefix)
        if not self.exists(prefix):
            return []
        found = self._call("list", prefix, lambda: self.fs.find(base))
        root = self.root.rstrip("/") + "/"
        return sorted(p[len(root) :] if p.startswith(root) else p for p in found)

    def folders(self) -> list[str]:
        """Names of the sub-folders directly under this store, sorted."""
        if not self.exists(""):
            return []
        entries = self._call("list", "", lambda: self.fs.ls(self.root, detail=True))
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")

    def write(self, key: str, data: bytes) -> None:
        """Create or replace ``key`` as a whole: readers see the old or the new object, never a part
        (object stores put atomically; on a local disk a temporary file is renamed over it)."""
        self._call("write", key, lambda: self._put(key, data))

    def write_once(self, key: str, data: bytes) -> None:
        """Create ``key``; an existing object is never replaced (FileExistsError)."""

        def put() -> None:
            if self.fs.exists(self.path(key)):
                raise FileExistsError(f"{redact(self.url)}/{key} exists already")
            self._put(key, data)

        self._call("write", key, put)

    def _put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.fs.rm(self.path(key)))

    def check_writable(self) -> None:
        """Fail now, before any work, if this folder cannot be written: a missing bucket or parent
        folder, a read-only folder, refused or missing credentials. A probe object is written and
        removed: on object stores only a real write tells (existence checks hide credential errors)."""
        fs, local = self.fs, self.is_local
        if local and not fs.exists(posixpath.dirname(self.root)):
            raise StorageError(
                f"cannot write to {redact(self.url)}: its folder {posixpath.dirname(self.root)} does not exist"
            )
        probe = f".write-probe-{uuid.uuid4().hex[:12]}"
        try:
            if local:
                fs.makedirs(self.root, exist_ok=True)
            self._put(probe, b"probe")
            fs.rm(self.path(probe))
        except Exception as exc:
            bucket = self.root.lstrip("/").split("/", 1)[0]
            hint = ""
            if not local and isinstance(exc, FileNotFoundError):
                hint = f" (does bucket {bucket} exist?)"
            raise StorageError(f"cannot write to {redact(self.url)}: {type(exc).__name__}: {exc}{hint}") from exc


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)
