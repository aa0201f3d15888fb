"""captionkit: train, evaluate and serve Show-Attend-Tell image captioners.

>>> import captionkit
>>> captioner = captionkit.load("runs/demo/best")  # doctest: +SKIP
>>> captioner.caption("photo.jpg").text  # doctest: +SKIP

``import captionkit`` is cheap: torch and the models load on first use of ``load`` or of
``Captioner``/``BaseCaptioner``/``CaptionResult``.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {"BaseCaptioner": "captionkit.infer.captioner",
         "Captioner": "captionkit.infer.captioner",
         "CaptionResult": "captionkit.infer.captioner",
         "EnsembleCaptioner": "captionkit.infer.ensemble"}


def load(path, device: str = "cpu", precision: str = "auto"):
    """Load a checkpoint folder into a :class:`captionkit.infer.captioner.Captioner` (``precision``:
    ``auto``, the default of every path: bf16 where the hardware computes it natively, else
    fp32; or ``fp32``/``bf16``).

    A list (or tuple) of checkpoint folders loads their ensemble, an
    :class:`captionkit.infer.ensemble.EnsembleCaptioner` with the same API: beam search over
    the mean of the members' log-probabilities (``captionkit.load([a, b])``; they must share
    vocabulary and encoder; a list of one is that checkpoint's plain Captioner)."""
    if isinstance(path, (list, tuple)):
        from captionkit.infer.ensemble import load_ensemble

        return load_ensemble(path, device, precision)
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


def __getattr__(name: str):
    """The captioner classes, imported on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'captionkit' has no attribute {name!r}")


__all__ = ["BaseCaptioner", "CaptionResult", "Captioner", "EnsembleCaptioner", "__version__",
           "list_decoders", "list_encoders", "load"]
