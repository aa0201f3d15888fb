"""Inference: captioning with a trained model, and nothing that trains one.

- ``decoding``: beam search (greedy is beam 1) and sampling, pure functions over a decoder's
  ``init_state``/``step``, shared by evaluation, the CLI, the server and export.
- ``captioner``: the ``Captioner`` contract (``BaseCaptioner``) and its PyTorch runtime
  (``captionkit.load(path).caption(image)``).
- ``ensemble``: several checkpoints decoded as one (the mean of their log-probabilities),
  behind the same decoder and captioner contracts.
- ``evaluation``: captions for a dataset split scored with the COCO metrics.
- ``export``, ``onnx_runtime``: the ONNX graphs and the onnxruntime ``Captioner``.
- ``viz``: per-word attention figures.
- ``batch``, ``batch_io``, ``batch_ray``: ``caption-dataset``, a folder or list of images
  captioned into one Parquet/JSONL file, in this process or on Ray Data (Ray loaded lazily).
"""
