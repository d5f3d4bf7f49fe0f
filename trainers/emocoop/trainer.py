"""EmoCoOp: dynamic vision-language prompt coupling for multi-label emotion recognition.

Parts (each switched by a ``TRAINER.EMOCOOP`` key, see ``trainers/emocoop/config.py`` and README.md, "EmoCoOp in EmoLab"):
text prompts with a meta-net (``CONTEXT``), GloVe context init (``USE_GLOVE_INIT``), dynamic
visual prompts with k-means init (``USE_VISUAL_PROMPTS``, ``USE_DYNAMIC_VISUAL``,
``USE_VISUAL_CLUSTERING``), V-T coupling (``USE_COUPLING``), auxiliary head and loss
(``USE_AUX_HEAD``, ``LOSS``), loss weighting (``WEIGHT_STRATEGY``) and the chromatic branch
(``USE_COLOR_ANALYSIS``, ``COLOR_FUSION``).

GloVe and k-means initialisation run when training starts from scratch (a hook's
``before_train``): evaluation (``--eval-only``) and resumed runs load the trained weights and
need neither the word vectors nor the training images' features.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from utils.errors import ConfigError
from datasets import build_data_loader
from trainers.clip_prompting.base import ClipTrainerBase, build_clip_backbone
from trainers.components import glove_init, visual_clusters
from trainers.components.aux_head import AuxiliaryEmotionHead
from trainers.components.chromatic import build_chromatic
from trainers.components.coupling import VisionTextCoupling
from trainers.components.loss_weighting import build_loss_weighting
from trainers.components.losses import build_multilabel_loss
from trainers.components.prompt_learner import PromptLearner, build_prompt_learner
from trainers.components.visual_prompts import DynamicVisualPrompts
from trainers.emocoop.config import check_emocoop_config, resolve_seed
from trainers.emocoop.hooks import AuxWeightHook, InitHook
from trainers.emocoop.model import EmoCoOpModel
from trainers.engine.hooks import HookBase
from trainers.registry import TRAINER_REGISTRY

logger = logging.getLogger(__name__)


def normalized_from_cfg(cfg) -> tuple:
    """(training batches normalised?, evaluation batches normalised?) from ``cfg.INPUT``."""
    if cfg.INPUT.NO_TRANSFORM:
        return False, False
    train = "normalize" in cfg.INPUT.TRANSFORMS
    test = "normalize" in cfg.INPUT.TEST_TRANSFORMS if cfg.INPUT.TEST_TRANSFORMS else train
    return train, test


@dataclass(frozen=True)
class InitSettings:
    """What the from-scratch initialisers (GloVe context, k-means visual prompts) need, read from the
    config once when the model is built (:func:`init_settings_from_cfg`)."""

    glove_model: str
    ctx_init: str
    glove_seed: int
    cluster_seed: int
    cluster_extractor: str
    cluster_arch: str
    cluster_weights: str
    cluster_max_images: int
    cluster_cache_dir: str
    clip_ident: str  # backbone, weights and input size: names the CLIP features in the cluster cache
    input_ident: str  # input size and interpolation: part of the cluster cache key
    pixel_mean: Any  # as the config holds them (part of the torchvision extractor's cache key)
    pixel_std: Any
    normalized_test: bool
    batch_size: int


def init_settings_from_cfg(cfg) -> InitSettings:
    node = cfg.TRAINER.EMOCOOP
    return InitSettings(
        glove_model=node.GLOVE_MODEL, ctx_init=node.CTX_INIT, glove_seed=resolve_seed(node.GLOVE_SEED, cfg.SEED),
        cluster_seed=resolve_seed(node.CLUSTER_SEED, cfg.SEED), cluster_extractor=node.CLUSTER_EXTRACTOR,
        cluster_arch=node.CLUSTER_ARCH, cluster_weights=node.CLUSTER_WEIGHTS,
        cluster_max_images=int(node.CLUSTER_MAX_IMAGES), cluster_cache_dir=node.CLUSTER_CACHE_DIR,
        clip_ident=f"{cfg.MODEL.BACKBONE.NAME}:{cfg.MODEL.BACKBONE.PRETRAINED}:{tuple(cfg.INPUT.SIZE)}",
        input_ident=f"{tuple(cfg.INPUT.SIZE)}:{cfg.INPUT.INTERPOLATION}",
        pixel_mean=cfg.INPUT.PIXEL_MEAN, pixel_std=cfg.INPUT.PIXEL_STD,
        normalized_test=normalized_from_cfg(cfg)[1], batch_size=int(cfg.DATALOADER.TEST.BATCH_SIZE),
    )


@TRAINER_REGISTRY.register()
class EmoCoOp(ClipTrainerBase):
    """EmoCoOp on a frozen CLIP; multi-label (BCE / ASL / focal) or single-label (cross-entropy)."""

    TASK_TARGETS = {"multi_label": {"labels"}, "single_label": {"label"}}
    #: visual prompts and the chromatic branch need the images: no frozen-feature cache
    supports_feature_cache = False

    def node(self):
        return self.cfg.TRAINER.EMOCOOP

    def precision_setting(self) -> str:
        return self.node().PREC

    @classmethod
    def finalize_config(cls, cfg) -> None:
        super().finalize_config(cfg)
        check_emocoop_config(cfg)
        if cfg.TRAINER.EMOCOOP.FINAL_MODEL:
            cfg.TEST.FINAL_MODEL = cfg.TRAINER.EMOCOOP.FINAL_MODEL

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg, node = self.cfg, self.node()
        clip = build_clip_backbone(cfg, self.device)
        prompt_learner = self._build_prompt_learner(clip)
        visual = self._build_visual_prompts(clip)
        aux = AuxiliaryEmotionHead(clip.embed_dim, self.num_classes, node.AUX_DROPOUT, node.AUX_HEADS) if node.USE_AUX_HEAD else None
        chromatic = (
            build_chromatic(node.COLOR_FUSION, clip.embed_dim, self.num_classes, node.COLOR_FOURIER_TEMPERATURE)
            if node.USE_COLOR_ANALYSIS else None
        )
        self.weighting = build_loss_weighting(node) if aux is not None else None
        self.loss_fn = build_multilabel_loss(node) if self.task == "multi_label" else None
        if self.task != "multi_label" and node.LOSS != "bce":
            logger.warning(f"TRAINER.EMOCOOP.LOSS {node.LOSS} is for multi-label data: single-label uses cross-entropy")
        norm_train, norm_test = normalized_from_cfg(cfg)
        self.init_settings = init_settings_from_cfg(cfg)
        self.model = EmoCoOpModel(
            clip, prompt_learner, visual, aux, chromatic, self.weighting,
            pixel_mean=cfg.INPUT.PIXEL_MEAN, pixel_std=cfg.INPUT.PIXEL_STD,
            normalized_train=norm_train, normalized_test=norm_test,
        )
        self.register_model("prompt_learner", prompt_learner)
        for name, module in (("visual_prompt_learner", visual), ("auxiliary_emotion_head", aux), ("chromatic", chromatic),
                             ("loss_weighting", self.weighting)):
            if module is not None and any(p.requires_grad for p in module.parameters()):
                self.register_model(name, module)
        parts = {"meta-net": node.CONTEXT != "StaticContext", "glove": node.USE_GLOVE_INIT, "visual prompts": visual is not None,
                 "k-means": visual is not None and node.USE_VISUAL_CLUSTERING,
                 "dynamic": visual is not None and visual.meta_net is not None,
                 "coupling": visual is not None and visual.coupling is not None, "aux head": aux is not None,
                 "weighting": node.WEIGHT_STRATEGY if aux is not None else "-",
                 "chromatic": node.COLOR_FUSION if chromatic is not None else "off"}
        logger.info("EmoCoOp parts: " + ", ".join(f"{k} {v if isinstance(v, str) else ('on' if v else 'off')}" for k, v in parts.items()))

    def _build_prompt_learner(self, clip) -> PromptLearner:
        node = self.node()  # with GloVe init, CTX_INIT's words are looked up in the word vectors, not tokenised
        return build_prompt_learner(clip, self.classnames, node, "TRAINER.EMOCOOP", "" if node.USE_GLOVE_INIT else None)

    def _build_visual_prompts(self, clip):
        node = self.node()
        if not node.USE_VISUAL_PROMPTS:
            return None
        if not clip.is_vit:
            raise ConfigError(f"TRAINER.EMOCOOP.USE_VISUAL_PROMPTS needs a ViT backbone; {clip.model_name} is not one")
        n = int(node.N_VISUAL_CTX)
        if node.VISUAL_CTX_CAP > 0 and n > node.VISUAL_CTX_CAP:
            logger.info(f"N_VISUAL_CTX {n} capped at VISUAL_CTX_CAP {node.VISUAL_CTX_CAP} (as the released code does)")
            n = int(node.VISUAL_CTX_CAP)
        coupling = VisionTextCoupling(clip.text_width, clip.vision_width, int(node.COUPLING_HEADS)) if node.USE_COUPLING else None
        return DynamicVisualPrompts(n, clip.vision_width, dynamic=bool(node.USE_DYNAMIC_VISUAL), coupling=coupling)

    # ------------------------------------------------------------------ initialisation (hook)
    def init_context_from_glove(self) -> None:
        """Overwrite the text context with projected word vectors (training from scratch only)."""
        st = self.init_settings
        path = glove_init.resolve_vectors_path(st.glove_model, switch="TRAINER.EMOCOOP.USE_GLOVE_INIT")
        vectors = glove_init.load_word_vectors(path)
        ctx_param = self.model_without_ddp.prompt_learner.context.ctx
        words = glove_init.context_words(st.ctx_init)
        ctx, missing = glove_init.glove_context(words, vectors, ctx_param.shape[-2], ctx_param.shape[-1], st.glove_seed)
        with torch.no_grad():
            ctx_param.copy_(ctx.to(ctx_param).expand_as(ctx_param))
        logger.info(
            f"text context from {vectors.vector_size}-d word vectors ({path}): {len(words) - len(missing)} of "
            f"{len(words)} words found" + (f", random for {', '.join(missing)}" if missing else "")
        )

    def init_visual_prompts_from_clusters(self) -> None:
        """Static visual prompts := projected k-means centres of training-image features."""
        st = self.init_settings
        visual = self.model_without_ddp.visual_prompts
        seed = st.cluster_seed
        clip = self.model_without_ddp.clip
        if st.cluster_extractor == "clip":
            extractor = visual_clusters.FEATURE_EXTRACTORS.get("clip")(clip=clip, ident=st.clip_ident)
        else:
            extractor = visual_clusters.FEATURE_EXTRACTORS.get("torchvision")(
                arch=st.cluster_arch, weights=st.cluster_weights, pixel_mean=st.pixel_mean,
                pixel_std=st.pixel_std, normalized=st.normalized_test, device=self.device,
            )
        data = self.dataset.train_x
        keep = visual_clusters.select_images(len(data), st.cluster_max_images, seed)
        data = [data[i] for i in keep]
        k = visual.n_prompts
        path = visual_clusters.cache_file(
            st.cluster_cache_dir, self.dataset.name, extractor, k, seed, [d.impath for d in data], extra=st.input_ident,
        )

        def compute():
            loader = build_data_loader(
                data, self.tfm_test, st.batch_size, is_train=False, num_classes=self.num_classes,
                num_workers=self.data.options.num_workers, seed=self.data.options.seed,
            )
            feats = visual_clusters.extract_features(loader, extractor, self.device)
            logger.info(f"k-means (k={k}, seed {seed}) over {len(feats)} {feats.shape[1]}-d {extractor.name} features")
            return visual_clusters.kmeans_centres(feats, k, seed)

        centres = visual_clusters.cached_centres(path, compute)
        visual.set_static(visual_clusters.project_centres(centres, visual.width, seed))

    # ------------------------------------------------------------------ hooks, loss, inference
    def build_hooks(self) -> List[HookBase]:
        node = self.node()
        hooks = super().build_hooks()
        inits = []
        if node.USE_GLOVE_INIT:
            inits.append(self.init_context_from_glove)
        if self.model_without_ddp.visual_prompts is not None and node.USE_VISUAL_CLUSTERING:
            inits.append(self.init_visual_prompts_from_clusters)
        hooks.append(InitHook(inits))  # priority HIGHEST: runs first
        if self.weighting is not None:
            hooks.append(AuxWeightHook(self.weighting, node.WEIGHT_SCORE))  # ABOVE_NORMAL: after EvalHook
        return hooks

    def _loss(self, logits: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
        if self.task == "multi_label":
            return self.loss_fn(logits, batch["labels"])
        return F.cross_entropy(logits.float(), batch["label"])

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        out = self.model(batch["img"])
        main = self._loss(out["logits"], batch)
        if "aux_logits" not in out:
            return {"loss": main}
        aux = self._loss(out["aux_logits"], batch)
        loss, extra = self.weighting.combine(main, aux)
        return {"loss": loss, "main_loss": main.detach(), "aux_loss": aux.detach(), **extra}

    def inference(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self.model(batch["img"])["logits"]
