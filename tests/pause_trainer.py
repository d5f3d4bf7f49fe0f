"""A CoOp that can wait in the middle of an epoch, so a test can signal a run at a known instant.

Imported by ``train.py --import tests.pause_trainer`` (subprocess tests). Without
``EMOLAB_TEST_PAUSE`` it is exactly CoOp. With ``EMOLAB_TEST_PAUSE=<dir suffix>:<marker file>``, the
run whose OUTPUT_DIR ends with ``<dir suffix>`` stops before the second step of its second epoch
(epoch 1 committed, epoch 2 half done), writes its process id to ``<marker file>`` and sleeps until a
signal ends it. A run that finds the marker already there does not wait (the resumed run).
"""
from __future__ import annotations

import os
import time

from trainers import TRAINER_REGISTRY
from trainers.clip_prompting.coop import CoOp


@TRAINER_REGISTRY.register()
class PausingCoOp(CoOp):
    def compute_loss(self, batch):
        spec = os.environ.get("EMOLAB_TEST_PAUSE")
        if spec and self.epoch == 1 and self.batch_idx == 1:
            suffix, marker = spec.split(":", 1)
            if os.path.normpath(self.output_dir).endswith(suffix) and not os.path.exists(marker):
                with open(marker + ".tmp", "w", encoding="utf-8") as f:
                    f.write(f"{os.getpid()} {os.getppid()}\n")
                os.replace(marker + ".tmp", marker)
                end = time.time() + 900  # a hang guard: the test signals long before
                while time.time() < end:
                    time.sleep(0.05)
                raise RuntimeError("PausingCoOp: nobody signalled the paused run")
        return super().compute_loss(batch)
