"""Transformer translation trainer on l2fast: data, tokenizer, model, search, training, CLI.

Needs the ``train`` extra: ``pip install l2fast[train]`` (sentencepiece, sacrebleu, matplotlib, tqdm).
"""
