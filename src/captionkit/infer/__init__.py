"""Inference: captioning with a trained model, and nothing that trains one.

- ``decoding``: beam search (greedy is beam 1) and sampling, pure functions over a decoder's
  ``init_state``/``step``, shared by evaluation, the CLI, the server and export.
- ``captioner``: the ``Captioner`` contract (``BaseCaptioner``) and its PyTorch runtime
  (``captionkit.load(path).caption(image)``).
- ``evaluation``: captions for a dataset split scored with the COCO metrics.
- ``export``, ``onnx_runtime``: the ONNX graphs and the onnxruntime ``Captioner``.
- ``viz``: per-word attention figures.
"""
