"""Errors a caller can tell apart: each maps to its own CLI exit code."""


class CallicError(Exception):
    """Base class of every error callic raises on purpose."""

    exit_code = 1


class CorruptFileError(CallicError):
    """The compressed file is truncated, damaged, or not a .cllc file."""

    exit_code = 3


class UnsupportedError(CallicError):
    """A well-formed file or image that this version cannot handle (format version, mode...)."""

    exit_code = 4


class ModelNotFoundError(CallicError):
    """The file names a model whose weights are not installed."""

    exit_code = 5


class VerificationError(CallicError):
    """Decoded pixels do not match the hash stored in the file."""

    exit_code = 6


class ImageReadError(CallicError):
    """An input image cannot be read."""

    exit_code = 2
