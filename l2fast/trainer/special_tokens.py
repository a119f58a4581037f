"""Ids of the special tokens, the same in every subword model the trainer makes (PAD 0, UNK 1,
BOS 2, EOS 3), so batches, the model and the decoder never ask which model made them. A module
of its own, with no imports, so that the model, batching and search load without sentencepiece."""

PAD, UNK, BOS, EOS = 0, 1, 2, 3
