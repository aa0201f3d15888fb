"""Encoders, attention and decoders. Importing the package registers every built-in decoder."""

from captionkit.models import decoders, transformer  # noqa: F401  (registration)
