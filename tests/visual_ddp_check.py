"""Standalone DDP run of the visual callbacks (run by tests/test_visual_callbacks.py in a subprocess; Lightning's
"ddp" re-launches argv, which under pytest would re-run the test session).

    python tests/visual_ddp_check.py OUT_DIR DEVICES

fits MAML (Conv4) on tiny random image episodes for one epoch and tests it, on CPU with gloo, with the
adaptation curve, the episode gallery, the W&B episode table and the regression plot (which skips image
data), a W&B logger (offline) and ``RunFolder(OUT_DIR)``.  Rank 0 records what reached W&B and writes
it to ``OUT_DIR/logged.json``; every rank writes ``OUT_DIR/done_<rank>`` when it has finished.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import WandbLogger  # noqa: E402
from pytorch_lightning.strategies import DDPStrategy  # noqa: E402

from lightning_meta import MAML, ClassImages, EpisodicDataModule  # noqa: E402
from lightning_meta.callbacks import AdaptationCurve, EpisodeGallery, EpisodeTable, RegressionPlot  # noqa: E402
from lightning_meta.callbacks.run_folder import RunFolder  # noqa: E402
from lightning_meta.models import Conv4  # noqa: E402


class RandomImages(EpisodicDataModule):
    def load_split(self, split):
        g = torch.Generator().manual_seed(["train", "val", "test"].index(split))
        return ClassImages.from_array(torch.randint(0, 256, (10, 6, 8, 8), generator=g, dtype=torch.uint8))


class RecordWandb(pl.Callback):
    """On rank 0, record the keys (and table sizes) of everything logged to the W&B run."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.table_rows: list[int] = []

    def on_fit_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        run = trainer.logger.experiment
        original = run.log

        def record(data, *args, **kwargs):
            for key, value in data.items():
                self.keys.append(key)
                if key == "test/episodes":
                    self.table_rows.append(len(value.data))
            return original(data, *args, **kwargs)

        run.log = record


def main(out: str, devices: int) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = MAML(Conv4(1, 3, hidden_channels=4, image_size=8), inner_lr=0.4, inner_steps=1, test_inner_steps=2)
    data = RandomImages(ways=3, shots=1, queries=2, meta_batch_size=4, episodes_per_epoch=8, val_episodes=4,
                        test_episodes=6)
    recorder = RecordWandb()
    callbacks = [RunFolder(out), AdaptationCurve(episodes=4), EpisodeGallery(episodes=2), EpisodeTable(),
                 RegressionPlot(), recorder]
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=1,
                         logger=WandbLogger(save_dir=out, offline=True), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                         num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(model, data)
    trainer.test(model, data)
    if trainer.is_global_zero:
        Path(out, "logged.json").write_text(json.dumps({"keys": recorder.keys, "table_rows": recorder.table_rows}))
    Path(out, f"done_{trainer.global_rank}").write_text("ok")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
