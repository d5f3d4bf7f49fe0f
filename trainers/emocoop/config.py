"""Config node ``TRAINER.EMOCOOP`` (every key of the released EmoCoOp files, plus EmoLab's switches).

Released keys keep their names and meaning; EmoLab adds one switch per part so that every
ablation is a config (see README.md, "EmoCoOp in EmoLab").
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from utils.errors import ConfigError
from configs.registry import register_config
from trainers.components.glove_init import context_words

VOTE_TYPES = ("mean", "max", "weighted")


@register_config
def add_emocoop_config(cfg: CN) -> None:
    n = cfg.TRAINER.EMOCOOP = CN()
    # --- keys of the released EmoCoOp (same names; defaults = its configs/trainers/CoCoOp/vit_emotion.yaml) ---
    n.N_CTX = 7  # text context vectors (with GloVe init; CLIP-word init takes the CTX_INIT token count)
    n.CTX_INIT = "The emotions contained in this photo are"  # context words: prompt = "<ctx> {class}."
    n.PREC = "fp32"  # fp16 | bf16 | fp32 | amp (autocast on CUDA; CPU runs fp32)
    n.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    n.N_VISUAL_CTX = 32  # visual prompt tokens (= k-means clusters); capped at VISUAL_CTX_CAP (16 used)
    n.VOTE_TYPE = "mean"  # mean | max | weighted: accepted for compatibility; the released code never reads it
    n.USE_GLOVE_INIT = True  # initialise the text context from word vectors (part 2)
    n.GLOVE_MODEL = "glove-wiki-gigaword-300"  # local .kv / word2vec / GloVe file, or a gensim name found locally
    n.USE_VISUAL_CLUSTERING = True  # k-means init of the static visual prompts (part 3)
    n.USE_COLOR_ANALYSIS = True  # chromatic warm/cool branch (part 7)
    n.AUX_LOSS_WEIGHT = 0.3296  # start value of the auxiliary loss weight w
    n.MIN_AUX_LOSS_WEIGHT = 0.1  # lower bound of w (validation schedules)
    n.MAX_AUX_LOSS_WEIGHT = 0.5  # upper bound of w (validation schedules)
    n.WEIGHT_PATIENCE = 5  # validations without improvement before w decays (WEIGHT_STRATEGY custom)
    n.IMPROVEMENT_THRESHOLD = 0.005  # score gain (fraction) that makes w grow (custom)
    n.DECAY_FACTOR = 0.95  # w *= DECAY_FACTOR after WEIGHT_PATIENCE bad validations (custom)
    n.GROWTH_FACTOR = 1.05  # w *= GROWTH_FACTOR on a clear improvement (custom)
    n.MIN_EPOCHS_BEFORE_ADJUST = 3  # w does not change at validations of epochs <= this
    n.WEIGHT_STRATEGY = "conservative"  # conservative | aggressive (presets) | custom | fixed | uncertainty
    # --- EmoLab switches and settings ---
    n.CONTEXT = "ConditionalContext"  # text context generator; StaticContext = no meta-net (part 1 off)
    n.META_HIDDEN_RATIO = 8  # meta-net hidden width = E // ratio (512 -> 64 for ViT-B/16)
    n.META_DROPOUT = 0.1  # dropout inside the meta-net
    n.GLOVE_SEED = -1  # seed of the fixed GloVe projection and of missing-word vectors (-1: SEED, else 42)
    n.USE_VISUAL_PROMPTS = True  # dynamic visual prompts (part 3; off also turns the coupling off)
    n.VISUAL_CTX_CAP = 16  # the released code caps N_VISUAL_CTX at 16 (0 = no cap)
    n.USE_DYNAMIC_VISUAL = True  # image-conditioned offset g(mean patch) on the visual prompts
    n.CLUSTER_EXTRACTOR = "clip"  # clip | torchvision: features for k-means
    n.CLUSTER_ARCH = "resnet50"  # torchvision architecture (CLUSTER_EXTRACTOR torchvision)
    n.CLUSTER_WEIGHTS = ""  # local weights file of CLUSTER_ARCH (state_dict; nothing is downloaded)
    n.CLUSTER_SEED = -1  # k-means random_state and projection seed (-1: SEED, else 42)
    n.CLUSTER_MAX_IMAGES = 2000  # training images used for k-means (seeded sample beyond; <= 0: all)
    n.CLUSTER_CACHE_DIR = "cache/visual_clusters"  # k-means centre cache (keyed files; "" = no cache)
    n.USE_COUPLING = True  # V-T coupling: visual prompts attend to the text context (part 4)
    n.COUPLING_HEADS = 4  # attention heads of the coupling
    n.USE_AUX_HEAD = True  # auxiliary emotion head + its loss (part 5)
    n.AUX_DROPOUT = 0.3  # dropout in the auxiliary head
    n.AUX_HEADS = 4  # attention heads in the auxiliary head
    n.LOSS = "bce"  # bce | asl | focal: loss of the main and auxiliary logits (multi-label)
    n.ASL_GAMMA_NEG = 4.0  # ASL focusing of negatives
    n.ASL_GAMMA_POS = 0.0  # ASL focusing of positives
    n.ASL_CLIP = 0.05  # ASL probability margin of negatives
    n.FOCAL_GAMMA = 2.0  # focal loss gamma
    n.FOCAL_ALPHA = -1.0  # focal loss alpha for positives (< 0: off)
    n.WEIGHT_SCORE = "hit@2"  # validation metric the schedule follows (the paper's "Recall@2")
    n.COLOR_FUSION = "fusion"  # fusion (learned, into the image feature) | residual (added to the logits)
    n.COLOR_FOURIER_TEMPERATURE = 10.0  # softmax temperature of the Fourier path
    n.FINAL_MODEL = ""  # weights for the final test: best_val | last_step | "" (= TEST.FINAL_MODEL, last_step as in Dassl)


def check_emocoop_config(cfg: CN) -> None:
    """Checks that need no model: values of enumerated keys."""
    n = cfg.TRAINER.EMOCOOP
    if n.VOTE_TYPE not in VOTE_TYPES:
        raise ConfigError(f"TRAINER.EMOCOOP.VOTE_TYPE {n.VOTE_TYPE!r} must be one of {', '.join(VOTE_TYPES)}")
    if n.FINAL_MODEL not in ("", "best_val", "last_step"):
        raise ConfigError(f"TRAINER.EMOCOOP.FINAL_MODEL {n.FINAL_MODEL!r} must be best_val, last_step or empty")
    if n.CLUSTER_EXTRACTOR not in ("clip", "torchvision"):
        raise ConfigError(f"TRAINER.EMOCOOP.CLUSTER_EXTRACTOR {n.CLUSTER_EXTRACTOR!r} must be clip or torchvision")
    if n.USE_GLOVE_INIT and not context_words(n.CTX_INIT):
        raise ConfigError("TRAINER.EMOCOOP.USE_GLOVE_INIT needs context words in TRAINER.EMOCOOP.CTX_INIT")
    if n.N_VISUAL_CTX < 1 and n.USE_VISUAL_PROMPTS:
        raise ConfigError(f"TRAINER.EMOCOOP.N_VISUAL_CTX must be >= 1 with USE_VISUAL_PROMPTS, got {n.N_VISUAL_CTX}")


def resolve_seed(value: int, run_seed: int) -> int:
    """A component seed: ``value`` if >= 0, else the run's seed, else 42 (the released constant)."""
    if value >= 0:
        return int(value)
    return int(run_seed) if run_seed >= 0 else 42
