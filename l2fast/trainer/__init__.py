"""What the translation trainer (``l2fast.nmt``) and the language-model trainer (``l2fast.lm``) share:
configuration and CLI plumbing, Transformer layers, precision, checkpoints, run directories, run
logs and plots, data errors, the optimisation recipe over ``l2fast.Penalized``, and which trainer
made a checkpoint or run (``kinds``).

Both trainers import from here; nothing here imports either of them.
"""
