"""Errors users see. Each names the file (and line) at fault, never a bare library traceback."""

from __future__ import annotations

from collections.abc import Iterable


class CaptionKitError(Exception):
    """Base class for every error captionkit raises on purpose."""


class DatasetError(CaptionKitError):
    """A dataset file is missing, empty or malformed."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ImageLoadError(CaptionKitError):
    """An image file could not be read or decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot read image ({reason})")
        self.path = path
        self.reason = reason


class CheckpointError(CaptionKitError):
    """A checkpoint is missing parts or is inconsistent."""


class ConfigError(CaptionKitError):
    """A config file or override is invalid."""


class UnknownNameError(CaptionKitError):
    """A registry has no entry called ``name``; the message lists the registered ``choices``."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.choices = tuple(choices)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}")

    def __reduce__(self):  # picklable across processes despite the custom signature
        return type(self), (self.kind, self.name, self.choices)


class NonFiniteLossError(CaptionKitError):
    """The training loss became NaN or infinite at ``step``."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
