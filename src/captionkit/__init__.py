"""captionkit: train, evaluate and serve Show-Attend-Tell image captioners.

>>> import captionkit
>>> captioner = captionkit.load("runs/demo/best")  # doctest: +SKIP
>>> captioner.caption("photo.jpg").text  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, device: str = "cpu", precision: str = "auto"):
    """Load a checkpoint folder into a :class:`captionkit.infer.captioner.Captioner` (``precision``:
    ``auto``, ``fp32`` or ``bf16`` decoding)."""
    from captionkit.infer.captioner import load as _load

    return _load(path, device, precision)


def list_encoders() -> list[str]:
    """Names of the registered encoders."""
    from captionkit.models.encoders import list_encoders as _list

    return _list()


def list_decoders() -> list[str]:
    """Names of the registered decoders."""
    from captionkit.models.decoders import list_decoders as _list

    return _list()


__all__ = ["__version__", "list_decoders", "list_encoders", "load"]
