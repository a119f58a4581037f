"""What the translation trainer (``l2fast.nmt``) and the language-model trainer (``l2fast.lm``) share:
configuration and CLI plumbing (the commands both have included), the training loop and its update
over micro-batches, Transformer layers, precision, checkpoints, run directories, run logs and plots,
data errors, the optimisation recipe over ``l2fast.Penalized``, fine-tuning from another run's
checkpoint with the pull back toward its weights (``finetune``), and which trainer made a checkpoint
or run (``kinds``).

Both trainers import from here; nothing here names either of them (``cli.TrainerCommands`` imports
the modules of the package a trainer hands it).
"""
