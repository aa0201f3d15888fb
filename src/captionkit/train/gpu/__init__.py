"""The GPU fast path of cross-entropy training, for the decoders that declare it.

- ``grouped``: the loss over captions grouped by image, organised for throughput, computed with
  the decoder's own maths (its attention functions, gate update, deep output).
- ``step``: ``FastTrainStep`` (one compiled, CUDA-graphed optimizer update), the
  ``FastCrossEntropy`` stage, and ``use_fast_path`` (when it applies).
- ``kernels``: the Triton kernels of the attention's score and context: the only module that
  imports Triton, and only when a CUDA step asks for them.
"""
