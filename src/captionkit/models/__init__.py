"""Models: encoders (images -> (B, N, D) grid features, registered with their metadata),
attention, decoders (``forward`` for teacher forcing, ``step`` for generation), the
``CaptionModel`` that joins them, ImageNet weight loading and numeric precision.

Importing the package registers every built-in decoder."""

from captionkit.models import decoders, transformer, updown  # noqa: F401  (registration)
