"""Training: everything that changes weights, and nothing inference needs.

- ``fit``: a run from a config (data, model or ``train.init``, stage, loop).
- ``loop``: the one epoch loop every stage runs in (schedule, progress, averaged logs, resume
  points, validation, checkpoints, early stopping, TensorBoard).
- ``stages``: what one update is (cross-entropy; SCST lives in ``scst``; the GPU fast path's
  cross-entropy in ``gpu``), each a ``step(batch) -> logs``.
- ``losses``, ``optim``, ``schedule``: the objective, Adam and the update, the learning-rate
  schedule as a pure function.
- ``resume``, ``distributed``: exact resume points; torchrun/DDP.
- ``gpu/``: the grouped, compiled, CUDA-graphed cross-entropy step and its Triton kernels.

Inference (:mod:`captionkit.infer`) never imports this package; this package uses inference's
decoding and evaluation (validation, SCST's sampling).
"""
