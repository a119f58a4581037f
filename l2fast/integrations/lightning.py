"""The penalty in Lightning's logs: ``Trainer(callbacks=[PenaltyLogger()])``."""
from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

from . import find_penalized, metrics


class PenaltyLogger(Callback):
    """Logs ``penalty`` (and ``grad_norm`` where Penalized clips) after each training batch through
    ``LightningModule.log``, as device tensors: Lightning converts them only at its logging steps
    (``log_every_n_steps``), so there is no host sync per step. With several Penalized optimizers the
    names end in the optimizer's index (``penalty/1``)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        found = [opt for opt in trainer.optimizers if find_penalized(opt) is not None]
        for index, optimizer in enumerate(found):
            suffix = f"/{index}" if len(found) > 1 else ""
            for name, value in metrics(optimizer).items():
                pl_module.log(name + suffix, value, on_step=True, on_epoch=False, prog_bar=False, logger=True,
                              batch_size=1)
