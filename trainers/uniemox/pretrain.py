"""UniEmoX pre-training (trainer ``UniEmoXPretrain``) on EmoSet.

Per batch: the scene view is masked (``MASK_RATIO``) and encoded by the MAE student; the loss is

    MAE_WEIGHT * L_MAE(scene) + SIM_WEIGHT * L_sim(f, C) + CON_WEIGHT * L_con(f, C, T)

with ``L_MAE`` the masked-patch reconstruction of the scene view, ``C`` the frozen CLIP teacher's
features of the UNMASKED scene view (resized to CLIP's resolution, CLIP's normalisation), ``T``
the CLIP text features of each image's caption (computed once, cached) and ``f`` the student
feature: the scene token ``decoder_embed(CLS)``, or with ``FUSION`` the fusion of the scene token
and the person token (the same encoder on the person view, its own mask). A weight of 0 switches
a loss off (MAE-only, +L_sim, +L_con and +fusion are configs). After training the run writes
``uniemox_pretrain.pth`` ({'model', 'att_fusion', 'epoch'}) and reports the three losses on the
held-out EmoSet phase (fixed views and masks) as its final record.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.fileio import atomic_torch_save
from datasets import build_dataset
from datasets.formats.person_boxes import read_person_boxes
from datasets.loader import EpochSampler, ShardSampler, seeded_data_loader
from trainers.components.fusion import build_fusion
from trainers.engine import TrainerBase
from trainers.engine.data import LoaderOptions, build_data_bundle
from trainers.registry import TRAINER_REGISTRY

from .captions import build_caption, caption_embeddings
from .checkpoints import HANDOFF_NAME, load_into_mae, resolve_checkpoint
from .config import effective_lr, vit_size
from .data import PretrainViews, collate, decode_batch_on_device
from .losses import contrastive_similarity_loss, similarity_loss
from .mae import MaskedAutoencoderViT
from .optim import build_schedule

logger = logging.getLogger(__name__)
HELD_OUT_EPOCH = 10**6  # the "epoch" whose seeds give the fixed held-out views


class PretrainNet(nn.Module):
    """The trainable part: the MAE student and the fusion module (or None)."""

    def __init__(self, mae: MaskedAutoencoderViT, fusion: Optional[nn.Module]) -> None:
        super().__init__()
        self.mae, self.fusion = mae, fusion

    def forward(self, scene: torch.Tensor, person: Optional[torch.Tensor], mask_ratio: float, reconstruct: bool):
        out = self.mae(scene, mask_ratio, reconstruct=reconstruct)
        feature = out.student
        if self.fusion is not None and person is not None:
            feature = self.fusion(feature, self.mae(person, mask_ratio, reconstruct=False).student)
        return out.loss, feature


def _normalise(u8: torch.Tensor, mean, std, size: Optional[int] = None) -> torch.Tensor:
    x = u8.float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@TRAINER_REGISTRY.register()
class UniEmoXPretrain(TrainerBase):
    """UniEmoX pre-training (module docstring)."""

    TASK_TARGETS = {"single_label": {"label"}}
    find_unused_parameters = True

    def node(self):
        return self.cfg.TRAINER.UNIEMOX_PRETRAIN

    @property
    def uses_clip(self) -> bool:
        return self.node().SIM_WEIGHT > 0 or self.node().CON_WEIGHT > 0

    @property
    def uses_person(self) -> bool:
        return self.uses_clip and self.node().FUSION.lower() != "none"

    # ------------------------------------------------------------------ data
    def build_data(self) -> None:
        cfg, p = self.cfg, self.node()
        dm = build_dataset(cfg)
        splits = {"train": dm.train_x, "val": dm.val, "test": dm.test}
        bad = [s for s in p.TRAIN_PHASES if s not in splits]
        if bad or not p.TRAIN_PHASES:
            raise ConfigError(f"TRAINER.UNIEMOX_PRETRAIN.TRAIN_PHASES must name train/val/test, got {tuple(p.TRAIN_PHASES)}")
        self.items = [d for s in p.TRAIN_PHASES for d in splits[s]]
        held = [s for s in ("test", "val") if s not in p.TRAIN_PHASES and splits[s]]
        self.held_out_split, self.held_out = (held[0], splits[held[0]]) if held else ("", [])
        if p.CON_WEIGHT > 0 and not all("scene" in d.attrs for d in self.items):
            raise ConfigError(f"L_con needs EmoSet annotations (DATASET.EMOSET.ATTRIBUTES True); dataset {dm.name} has none")
        mode = p.DECODE.lower()
        if mode not in ("auto", "worker", "device"):
            raise ConfigError(f"TRAINER.UNIEMOX_PRETRAIN.DECODE must be auto, worker or device, got {p.DECODE!r}")
        self.decode_on_device = mode == "device" or (mode == "auto" and self.device.type == "cuda")
        bs = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if len(self.items) // self.world_size < bs:
            raise ConfigError(f"DATALOADER.TRAIN_X.BATCH_SIZE {bs} exceeds the {len(self.items)} pre-training images")
        self.image_size = int(cfg.INPUT.SIZE[0])
        self.pixel_mean, self.pixel_std = tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD)
        self.rrcrop_scale = tuple(p.RRCROP_SCALE)
        boxes_file = p.PERSON_BOXES or os.path.join(dm.root, "person_boxes.json")
        self.data = build_data_bundle(cfg, dm, self._view_loaders(dm.root, boxes_file), rank=self.rank,
                                      world_size=self.world_size, device=self.device,
                                      splits=(self.items, [], self.held_out), test_optional=True)
        self.evaluator = None
        logger.info(f"pre-training on {dm.name} phases {'+'.join(p.TRAIN_PHASES)}: {len(self.items)} images"
                    + (f"; held out: {self.held_out_split} ({len(self.held_out)})" if self.held_out else "")
                    + f"; decoding on the {'training device' if self.decode_on_device else 'loader workers'}")

    def _view_loaders(self, root: str, boxes_file: str):
        """Loader factory of the two views (train: epoch-seeded views; held out: fixed views)."""

        def make(data, train: bool, o: LoaderOptions, transform=None):
            boxes = (read_person_boxes(boxes_file, root, [d.impath for d in data]) if self.uses_person
                     else [None] * len(data))
            views = PretrainViews([d.impath for d in data], [d.label for d in data], boxes, self.image_size,
                                  self.rrcrop_scale, self.uses_person, o.seed, decode_in_worker=not self.decode_on_device)
            if train:
                sampler = EpochSampler(len(data), seed=o.seed, shuffle=True, rank=o.rank, world_size=o.world_size)
            else:
                sampler = ShardSampler(len(data), rank=o.rank, world_size=o.world_size)
                sampler = [(i, HELD_OUT_EPOCH) for i in sampler]  # fixed views
            return seeded_data_loader(views, sampler, o.train_batch_size if train else o.test_batch_size, seed=o.seed,
                                      rank=o.rank, num_workers=o.num_workers, drop_last=train, pin_memory=o.pin_memory,
                                      prefetch_factor=o.prefetch_factor, collate_fn=collate)

        return make

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg, p = self.cfg, self.node()
        patch, dim, depth, heads = vit_size(p, "TRAINER.UNIEMOX_PRETRAIN")
        size = int(cfg.INPUT.SIZE[0])
        if size % patch or cfg.INPUT.SIZE[0] != cfg.INPUT.SIZE[1]:
            raise ConfigError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} must be square and a multiple of the patch size {patch}")
        if not 0.0 <= p.MASK_RATIO < 1.0:
            raise ConfigError(f"TRAINER.UNIEMOX_PRETRAIN.MASK_RATIO must be in [0, 1), got {p.MASK_RATIO}")
        if p.MAE_WEIGHT <= 0 and not self.uses_clip:
            raise ConfigError("every UniEmoX loss weight is 0 (MAE_WEIGHT, SIM_WEIGHT, CON_WEIGHT): nothing to train")
        mae = MaskedAutoencoderViT(size, patch, dim, depth, heads, int(p.DECODER_EMBED_DIM), int(p.DECODER_DEPTH),
                                   int(p.DECODER_NUM_HEADS), norm_pix_loss=bool(p.NORM_PIX_LOSS))
        fusion = build_fusion(p.FUSION, int(p.DECODER_EMBED_DIM)) if self.uses_person else None
        self.teacher, self.text_table = None, None
        if self.uses_clip:
            self._build_teacher()
        init = p.INIT.strip()
        if not init:
            raise ConfigError("TRAINER.UNIEMOX_PRETRAIN.INIT is empty: give an MAE / UniEmoX checkpoint "
                              "(the released setting starts from ImageNet MAE weights) or 'random'")
        if init.lower() == "random":
            logger.info("TRAINER.UNIEMOX_PRETRAIN.INIT random: the student starts from random weights (MAE initialisation)")
        else:
            load_into_mae(mae, resolve_checkpoint(init, ("mae",)), fusion)
        self.model = PretrainNet(mae, fusion)
        from timm.optim import param_groups_weight_decay

        groups = param_groups_weight_decay(mae, float(cfg.OPTIM.WEIGHT_DECAY))
        if fusion is not None and any(True for _ in fusion.parameters()):
            groups += param_groups_weight_decay(fusion, float(cfg.OPTIM.WEIGHT_DECAY))
        groups = [g for g in groups if g["params"]]
        lr = effective_lr(p.BLR, cfg.OPTIM.LR, self.data.options.train_batch_size, self.world_size,
                          "TRAINER.UNIEMOX_PRETRAIN")
        fused = bool(cfg.OPTIM.FUSED) and self.device.type == "cuda"
        optim = torch.optim.AdamW(groups, lr=lr, betas=(cfg.OPTIM.ADAM_BETA1, cfg.OPTIM.ADAM_BETA2),
                                  **({"fused": True} if fused else {}))
        sched = build_schedule(optim, lr, float(p.MIN_LR), float(cfg.OPTIM.WARMUP_EPOCH), float(cfg.OPTIM.MAX_EPOCH),
                               len(self.train_loader))
        logger.info(f"lr {lr:.3g}; losses: MAE x{p.MAE_WEIGHT}, L_sim x{p.SIM_WEIGHT}, L_con x{p.CON_WEIGHT}; "
                    f"fusion {p.FUSION if fusion is not None else 'none (scene token only)'}")
        self.register_model("mae", mae, optim=optim, sched=sched)
        if fusion is not None:
            self.register_model("fusion", fusion, optim=None, sched=None)

    def _build_teacher(self) -> None:
        from clip import load_clip

        p = self.node()
        weights = p.TEACHER.PRETRAINED.strip()
        if not weights:
            raise ConfigError("TRAINER.UNIEMOX_PRETRAIN.TEACHER.PRETRAINED is empty: give the CLIP weights (a file, "
                              "an open_clip tag such as openai) or 'random'")
        if weights.lower() == "random":
            logger.warning(f"the CLIP teacher {p.TEACHER.NAME} has RANDOM weights (TEACHER.PRETRAINED random)")
            weights = ""
        self.teacher = load_clip(p.TEACHER.NAME, weights, device=self.device)
        if self.teacher.embed_dim != p.DECODER_EMBED_DIM:
            raise ConfigError(f"TRAINER.UNIEMOX_PRETRAIN.DECODER_EMBED_DIM {p.DECODER_EMBED_DIM} must equal the "
                              f"teacher {p.TEACHER.NAME}'s embedding size {self.teacher.embed_dim}")
        if p.CON_WEIGHT > 0:
            captions = [build_caption(d.attrs, d.attrs.get("emotion", d.classname)) for d in self.items + self.held_out]
            table = caption_embeddings(self.teacher, captions, p.TEXT_CACHE_DIR)
            self.text_table = table[: len(self.items)].to(self.device)
            self.held_out_text = table[len(self.items):].to(self.device)

    # ------------------------------------------------------------------ step
    def views(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if "bytes" in batch:
            batch = decode_batch_on_device(batch, self.device, self.image_size, self.rrcrop_scale, self.uses_person)
        return batch

    def pretext_losses(self, batch: Dict[str, Any], text_table: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        p = self.node()
        batch = self.views(batch)
        scene_u8 = batch["img"]
        scene = _normalise(scene_u8, self.pixel_mean, self.pixel_std)
        person = _normalise(batch["person"], self.pixel_mean, self.pixel_std) if "person" in batch else None
        mae_loss, feature = self.model(scene, person, float(p.MASK_RATIO), p.MAE_WEIGHT > 0)
        out: Dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=scene.device)
        if mae_loss is not None:
            out["loss_mae"] = mae_loss
            total = total + p.MAE_WEIGHT * mae_loss
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher
                clip_image = t.encode_image(_normalise(scene_u8, t.mean, t.std, t.image_size)).float()
            if p.SIM_WEIGHT > 0:
                out["loss_sim"] = similarity_loss(feature, clip_image)
                total = total + p.SIM_WEIGHT * out["loss_sim"]
            if p.CON_WEIGHT > 0:
                text = text_table[batch["index"].to(text_table.device)]
                out["loss_con"] = contrastive_similarity_loss(feature, clip_image, text, t.logit_scale.exp())
                total = total + p.CON_WEIGHT * out["loss_con"]
        out["loss"] = total
        return out

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.pretext_losses(batch, self.text_table)

    # ------------------------------------------------------------------ end of training
    def write_handoff(self) -> None:
        if not (self.is_main and self.node().HANDOFF):
            return
        net = self.model_without_ddp
        state = {"model": net.mae.state_dict(), "att_fusion": net.fusion.state_dict() if net.fusion is not None else {},
                 "epoch": self.epoch + 1}
        path = os.path.join(self.output_dir, HANDOFF_NAME)
        atomic_torch_save(state, path)
        logger.info(f"pre-trained weights for fine-tuning: {path} (TRAINER.UNIEMOX.INIT)")

    def final_test(self) -> Dict[str, float]:
        """The hand-off file for fine-tuning, then the engine's final test and commit."""
        self.write_handoff()
        return super().final_test()

    def test(self, split: Optional[str] = None, final: bool = True) -> Dict[str, float]:
        """The pretext losses on the held-out phase (the phase pre-training did not use)."""
        if self.test_loader is None:  # every phase was trained on: a final record with no metrics
            if self.is_main:
                self.writer.write({"split": "train", "epoch": self.epoch + 1, "final": True, "metrics": {}})
            return {}
        return self.evaluate(self.held_out_split, final=final)

    @torch.no_grad()
    def evaluate(self, split: str, final: bool = False) -> Dict[str, float]:
        """The pretext losses on the held-out phase, with fixed views and masks (seeded)."""
        from trainers.engine.utils import autocast, to_device

        self.set_model_mode("eval")
        sums: Dict[str, float] = {}
        n = 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.data.options.seed + 12345)
            for batch in self.test_loader:
                batch = to_device(batch, self.device)
                with autocast(self.precision, self.device):
                    out = self.pretext_losses(batch, getattr(self, "held_out_text", None))
                b = len(batch["index"])
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * b
                n += b
        results = {k: v / max(n, 1) for k, v in sums.items()}
        logger.info(f"held-out {split} pretext losses: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        if self.is_main:
            self.writer.write({"split": split, "epoch": self.epoch + 1, "final": final, "metrics": results})
        self.set_model_mode("train")
        return results

    def inference(self, batch: Dict[str, Any]) -> torch.Tensor:
        raise ConfigError("UniEmoXPretrain has no classifier: fine-tune with the UniEmoX trainer")
