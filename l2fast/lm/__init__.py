"""Decoder-only language-model trainer on l2fast: text data, byte or sentencepiece tokens, model,
training, evaluation (loss, perplexity, bits per byte) and generation with a key/value cache.

Shares its layers, precision, checkpoints, run directories, logs and CLI plumbing with the
translation trainer through ``l2fast.trainer``.
"""
