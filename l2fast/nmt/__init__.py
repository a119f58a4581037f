"""Transformer translation trainer on l2fast: data, tokenizer, model, search, training, CLI.

Needs the ``nmt`` extra: ``pip install l2fast[nmt]`` (sentencepiece, sacrebleu, matplotlib, tqdm).
"""
