"""The penalty in the Hugging Face Trainer's logs.

``log_penalty(trainer)`` adds ``penalty`` (and ``grad_norm`` where Penalized clips and the Trainer does
not) to every record the Trainer logs, read from the optimizer at the logging step only: one host
sync per logged record, as the Trainer's own loss costs, none per step.
"""
from __future__ import annotations

import transformers

from . import metrics


class PenaltyCallback(transformers.TrainerCallback):
    """Adds the optimizer's ``metrics()`` to each record the Trainer logs, keeping the Trainer's own
    values where both have one (its ``grad_norm`` is measured before its clipping, which runs first).

    The Trainer calls reporting integrations (TensorBoard, W&B, ...) before the callbacks passed to it,
    so pass this one with ``log_penalty(trainer)``, which puts it ahead of them; from ``callbacks=[...]``
    it reaches ``trainer.state.log_history`` and the console only.
    """

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or "loss" not in logs:  # evaluation and end-of-training records
            return
        ours = {name: value.item() for name, value in metrics(optimizer).items() if name not in logs}
        logs.update(ours)
        # The Trainer appends a copy of the record to its history before the callbacks see it.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(ours)


def log_penalty(trainer: transformers.Trainer) -> transformers.Trainer:
    """Logs the penalty with every training record of ``trainer``, reporters included; returns it."""
    handler = trainer.callback_handler
    if not any(isinstance(callback, PenaltyCallback) for callback in handler.callbacks):
        handler.callbacks.insert(0, PenaltyCallback())
    return trainer
