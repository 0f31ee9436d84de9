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

import datetime as dt
import errno
import logging
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec
import fsspec.asyn

from codec.errors import CallicError
from codec.files import read_regular_file

log = logging.getLogger(__name__)
T = TypeVar("T")

# Defaults of a job's source limits (``--max-source-bytes``, ``--read-timeout``). 2 GiB, as for
# ``callic encode`` inputs (``codec.images.MAX_INPUT_BYTES``): room for an uncompressed image at
# the codec's pixel limit (CALLIC_MAX_PIXEL_BYTES, 1 GiB) and its metadata.
MAX_SOURCE_BYTES = 1 << 31
READ_TIMEOUT_S = 300.0

# OSError numbers that no retry can fix.
_PERMANENT_ERRNO = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.ELOOP,  # a symbolic link loop stays a loop
    errno.ENXIO,  # a socket or a device without its driver
    errno.ENODEV,
    errno.EINVAL,
    errno.EFBIG,
}
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


class ExistsError(StorageError):
    """``write_once`` found its key taken (another process won the race for it)."""


class SourceError(StorageError):
    """A source the job refuses to read: not a regular file (a FIFO, a device, a link loop), over
    the size limit, or no answer within the read timeout. Its image becomes a failed row."""


# S3 error codes no retry can fix, where an error reaches us as botocore's ``ClientError`` (s3fs
# turns most into ``PermissionError`` / ``FileNotFoundError``, permanent already).
_PERMANENT_S3_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidBucketName",
}
# S3 stores retry inside botocore first, with its "standard" retry mode: throttling, 5xx and
# connection errors are classified there by the service's own error codes, with its backoff. Our
# own ``retrying`` is the outer loop, for what fsspec and s3fs raise above botocore. A user's
# ``config_kwargs`` wins.
S3_RETRIES = {"mode": "standard", "max_attempts": 5}


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` can help: network trouble, throttling and server errors can;
    missing objects, refused access, missing credentials, full disks and bad arguments cannot.
    Decided by exception type, errno and botocore's exception classes and error codes (in the
    ``__cause__`` chain too), never by the text of a message."""
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNO:
        return False
    if _permanent_s3(exc):
        return False
    return isinstance(exc, OSError | ConnectionError | TimeoutError) or _is_botocore(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it (``raise ... from``, or the exception being handled)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _permanent_s3(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError
    except ImportError:  # no S3 support installed: no botocore error can occur
        return False
    for e in _chain(exc):
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return True
        if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in _PERMANENT_S3_CODES:
            return True
    return False


def _is_botocore(exc: BaseException) -> bool:
    """botocore's other errors (endpoint, connection, read timeouts, retries exhausted)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return False
    return isinstance(exc, BotoCoreError | ClientError)


def fs_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The fsspec options of a store: ``options``, and for S3 botocore's retry mode
    (``S3_RETRIES``) unless the user's ``config_kwargs`` set retries."""
    if not url.startswith(("s3://", "s3a://")):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", S3_RETRIES)
    return {**options, "config_kwargs": config}


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
            log.warning("retrying %s in %.2f s after %s: %s", what, delay, type(exc).__name__, redact(str(exc)))
            time.sleep(delay)
    raise AssertionError("unreachable")


# A URL in free text: scheme://authority[/path][?query][#fragment].
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s'\"<>]*)(?P<rest>[^\s'\"<>]*)")
_SECRET_WORDS = ("signature", "credential", "token", "secret", "password", "passwd", "apikey", "api_key", "access_key")


def _secret_param(name: str) -> bool:
    """The rule for query parameters that carry secrets: presigned-URL parameters (``X-Amz-*``,
    ``X-Goog-*``, Azure's ``sig``), and any name naming a key, token, signature or password."""
    n = name.lower()
    if n in ("sig", "key", "auth", "code") or n.startswith(("x-amz-", "x-goog-")):
        return True
    return any(w in n for w in _SECRET_WORDS)


def _clean_url(m: re.Match[str], mask: str | None) -> str:
    authority = m["authority"]
    if "@" in authority:
        host = authority.rsplit("@", 1)[1]
        authority = host if mask is None else f"{mask}@{host}"
    rest = m["rest"]
    path, q, query = rest.partition("?")
    if q:
        query, h, fragment = query.partition("#")
        kept = []
        for param in query.split("&"):
            name, eq, _ = param.partition("=")
            if not _secret_param(name):
                kept.append(param)
            elif mask is not None:
                kept.append(f"{name}{eq}{mask}")
        rest = path + ("?" + "&".join(kept) if kept else "") + h + fragment
    return m["scheme"] + authority + rest


def redact(text: str) -> str:
    """``text`` (a URL, or a message with URLs in it) with every user:password part and every
    secret-carrying query parameter masked as ``***``: for messages, logs and manifest errors."""
    return _URL.sub(lambda m: _clean_url(m, "***"), str(text))


def strip_credentials(url: str) -> str:
    """``url`` without its user:password part and its secret query parameters, for what is
    stored (the job spec): a resumed job gets its credentials from ``--storage-options``."""
    return _URL.sub(lambda m: _clean_url(m, None), str(url))


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

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The fsspec instance holds sockets and event loops: each process makes its own.
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url, **fs_options(self.url, self.options))
            except Exception as exc:
                raise StorageError(f"cannot open {redact(self.url)}: {type(exc).__name__}: {redact(str(exc))}") from exc
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
        except (FileNotFoundError, StorageError):  # ExistsError, SourceError: said already
            raise
        except Exception as exc:
            raise StorageError(f"{what} {self.name(key)} failed: {type(exc).__name__}: {redact(str(exc))}") from exc

    def name(self, key: str) -> str:
        """How messages name ``key``: its URL without credentials."""
        return f"{redact(self.url)}/{key}"

    def read(self, key: str) -> bytes:
        return self._call("read", key, lambda: self.fs.cat_file(self.path(key)))

    def read_source(self, key: str, max_bytes: int, timeout_s: float) -> bytes:
        """A source image's bytes, refusing what would hang or exhaust a worker: on a local disk
        only regular files (a FIFO blocks forever, a link to /dev/zero never ends), at most
        ``max_bytes`` (a file growing while read cannot exceed it); on an object store at most
        ``max_bytes`` and ``timeout_s`` seconds per attempt. Raises ``SourceError`` naming the key."""
        if self.is_local:
            path, name = self.path(key), self.name(key)
            return self._call("read", key, lambda: read_regular_file(path, max_bytes, SourceError, name))
        data = self._call("read", key, lambda: self._cat_with_timeout(key, max_bytes + 1, timeout_s))
        if len(data) > max_bytes:
            raise SourceError(f"{self.name(key)}: larger than the {max_bytes}-byte limit for a source")
        return data

    def _cat_with_timeout(self, key: str, end: int, timeout_s: float) -> bytes:
        fs, path = self.fs, self.path(key)
        try:
            if not isinstance(fs, fsspec.asyn.AsyncFileSystem) or fs.asynchronous:
                return fs.cat_file(path, start=0, end=end)
            return fsspec.asyn.sync(fs.loop, fs._cat_file, path, start=0, end=end, timeout=timeout_s)
        except fsspec.asyn.FSTimeoutError:
            # Not retried here: the row fails and ``resume`` tries the image again.
            raise SourceError(f"{self.name(key)}: no answer within {timeout_s:g} s") from None
        except OSError as exc:
            # S3 answers a range from byte 0 of an empty object with 416: it is empty, not broken.
            if "range" in str(exc).lower() and fs.size(path) == 0:
                return b""
            raise

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
        """Create ``key`` atomically; an existing object is never replaced (StorageError "exists
        already"), even when many processes race for it: on a local disk the data is written to a
        temporary file and hard-linked to ``key`` (the link fails if ``key`` exists); on object
        stores the put is conditional (``mode="create"``: If-None-Match on S3, where the server
        enforces it; stores without conditional puts get fsspec's check-then-put, a best effort).
        A retried put that finds ``key`` holding exactly ``data`` (its first try landed) succeeds."""
        tried = False

        def put() -> None:
            nonlocal tried
            try:
                if tried and self.fs.cat_file(self.path(key)) == data:
                    return
            except FileNotFoundError:
                pass
            tried = True
            try:
                self._create(key, data)
            except FileExistsError:
                raise ExistsError(f"{self.name(key)} exists already") from None

        self._call("write", key, put)

    def _create(self, key: str, data: bytes) -> None:
        path = self.path(key)
        if not self.is_local:
            if self.fs.exists(path):  # saves the upload; the conditional put below decides
                raise FileExistsError(path)
            self.fs.pipe_file(path, data, mode="create")
            return
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
            except OSError as exc:  # a filesystem without hard links: exclusive create, then write
                if isinstance(exc, FileExistsError) or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                with open(path, "xb") as f:
                    f.write(data)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

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

    def modified(self, key: str) -> dt.datetime | None:
        """When ``key`` was last written (UTC), or None where the store does not say."""
        try:
            when = self._call("stat", key, lambda: self.fs.modified(self.path(key)))
        except (NotImplementedError, StorageError):
            return None
        if not isinstance(when, dt.datetime):
            return None
        return when if when.tzinfo else when.astimezone(dt.UTC)  # naive: the local clock's time

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
            raise StorageError(
                f"cannot write to {redact(self.url)}: {type(exc).__name__}: {redact(str(exc))}{hint}"
            ) from exc


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def read_url(url: str, options: dict[str, Any] | None = None) -> bytes:
    """One file by path or fsspec URL, through ``Store`` (its retries, S3 retry mode, redacted
    errors): a training ``--init``, a benchmark's image."""
    parent, _, name = str(url).rstrip("/").rpartition("/")
    return Store(parent or ".", options or {}).read(name)
