"""ImageNet CNN backbones (torchvision; timm when installed) for the trainers that do not use CLIP.

:func:`build_cnn_backbone` returns a :class:`CNNBackbone`: the torchvision network without its
ImageNet classifier, mapping images ``[B, 3, H, W]`` to features ``[B, out_dim]``. Names:

* ``resnet18 | resnet34 | resnet50 | resnet101 | resnet152`` (pooled 512 / 2048-d features);
  stages ``stem, layer1 .. layer4``;
* ``vgg11_bn | vgg13_bn | vgg16_bn | vgg19_bn`` (4096-d output of fc7, the last fully connected
  layer before ImageNet's classifier); stages ``block1 .. block5`` (conv blocks, each ending in
  a max-pool), ``fc6, fc7``;
* ``vit_b_16 | vit_b_32 | vit_l_16 | vit_l_32`` (class-token features); stages
  ``embed, block1 .. blockN, norm``; the input size must be the one the weights were trained at;
* ``timm:<name>`` any timm model (``num_classes=0``); stages = its top-level children, plus
  ``block1 ..`` when it has ``blocks``.

Weights come from a local file (a state dict of the torchvision / timm model, or a checkpoint
with a ``state_dict`` entry; the ImageNet classifier's keys are ignored) loaded with
``weights_only=True``. In a config (:func:`resolve_cnn_pretrained`), ``""`` means the ImageNet
weights the papers use: torchvision's file in the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, default ``~/.cache/torch/hub/checkpoints``), timm's in
the Hugging Face cache, else downloaded, else a one-line error naming the file and the folder;
``random`` is the only way to random weights. :func:`build_cnn_backbone` itself takes a file
or ``""``/``random`` (random initialisation). Freezing through a stage stops
gradients to that stage and every earlier parameter, and keeps the BatchNorm layers whose
parameters are all frozen in eval mode (running statistics unchanged). A module path of the
network (``features.10``, ``layer3.1``) may be given instead of a stage name.
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from utils.errors import ConfigError
from utils.fileio import optional_path
from utils.registry import closest
from configs.registry import register_config

from .weights import load_backbone_weights, read_state_dict, timm_imagenet, torchvision_imagenet  # noqa: F401  (public here too)

logger = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VGGS = ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")
TIMM_PREFIX = "timm:"


@register_config
def add_cnn_config(cfg) -> None:
    """MODEL.CNN.*: options of the torchvision / timm backbones (EW-MTCNN, VARegression)."""
    from yacs.config import CfgNode as CN

    cfg.MODEL.CNN = CN()
    cfg.MODEL.CNN.FREEZE_THROUGH = ""  # "" = train all | a stage (layer3, block4, fc7, ...) | a module path | "all"
    cfg.MODEL.CNN.BACKBONE_LR_MULT = 1.0  # backbone learning rate = OPTIM.LR * this; heads use OPTIM.LR
    cfg.MODEL.CNN.HEAD_LR_STAGES = ()  # backbone stages trained at the heads' rate (e.g. ["fc6", "fc7"])


def known_backbones() -> List[str]:
    return list(RESNETS + VGGS + VITS) + [TIMM_PREFIX + "<name>"]


class CNNBackbone(nn.Module):
    """A classification network without its classifier: images ``[B, 3, H, W]`` -> ``[B, out_dim]``.

    Args:
        net: the network, its classifier already replaced by ``nn.Identity``.
        out_dim: feature size.
        stages: ordered ``(name, parameter-name prefixes)``; earlier stages come first.
        name: the backbone name (for messages).
    """

    def __init__(self, net: nn.Module, out_dim: int, stages: Sequence[Tuple[str, Sequence[str]]], name: str) -> None:
        super().__init__()
        self.net = net
        self.out_dim = int(out_dim)
        self.stages: List[Tuple[str, Tuple[str, ...]]] = [(s, tuple(p)) for s, p in stages]
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def stage_names(self) -> List[str]:
        return [s for s, _ in self.stages]

    def _stage_params(self, stage: str) -> List[str]:
        prefixes = dict(self.stages)[stage]
        return [n for n, _ in self.net.named_parameters() if any(n == p or n.startswith(p) for p in prefixes)]

    def params_through(self, stage: str) -> List[str]:
        """Parameter names of ``stage`` and of everything registered before it (``net``-relative).

        ``stage``: a stage name, a module path / parameter name of ``net``, or ``"all"``.
        """
        names = [n for n, _ in self.net.named_parameters()]
        if stage == "all":
            return names
        if stage in dict(self.stages):
            members = set(self._stage_params(stage))
            idx = self.stage_names().index(stage)
            for earlier, _ in self.stages[:idx]:
                members |= set(self._stage_params(earlier))
            last = max((names.index(n) for n in members), default=-1)
            return names[: last + 1]
        inside = [i for i, n in enumerate(names) if n == stage or n.startswith(stage + ".")]
        if not inside:
            hint = closest(stage, self.stage_names() + ["all"])
            raise ConfigError(
                f"MODEL.CNN.FREEZE_THROUGH {stage!r} is no stage or module of {self.name}"
                + (f" (did you mean {hint!r}?)" if hint else f" (stages: {', '.join(self.stage_names())}, all)")
            )
        return names[: max(inside) + 1]

    def freeze_through(self, stage: str) -> List[str]:
        """Freeze ``stage`` and everything before it (see :meth:`params_through`); returns the names."""
        if not stage:
            return []
        frozen = set(self.params_through(stage))
        for n, p in self.net.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        logger.info(f"{self.name}: frozen through {stage!r} ({len(frozen)} of {len(list(self.net.parameters()))} tensors)")
        self.train(self.training)
        return sorted(frozen)

    def stage_parameters(self, stages: Sequence[str]) -> List[nn.Parameter]:
        """The parameters of the named stages (for a separate learning rate)."""
        known = dict(self.stages)
        params: List[nn.Parameter] = []
        by_name = dict(self.net.named_parameters())
        for s in stages:
            if s not in known:
                hint = closest(s, list(known))
                raise ConfigError(f"MODEL.CNN.HEAD_LR_STAGES: {s!r} is no stage of {self.name}"
                                  + (f" (did you mean {hint!r}?)" if hint else f" (stages: {', '.join(known)})"))
            params += [by_name[n] for n in self._stage_params(s)]
        return params

    def train(self, mode: bool = True) -> "CNNBackbone":
        super().train(mode)
        for m in self.net.modules():  # frozen BatchNorm keeps its running statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self


class _ViTFeatures(nn.Module):
    """torchvision VisionTransformer up to the class-token output of its final LayerNorm."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v._process_input(x)
        cls = v.class_token.expand(x.shape[0], -1, -1)
        x = v.encoder(torch.cat([cls, x], dim=1))
        return x[:, 0]


def _resnet(name: str) -> Tuple[nn.Module, int, list, Tuple[str, ...]]:
    import torchvision.models as tvm

    net = getattr(tvm, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    stages = [("stem", ("conv1.", "bn1."))] + [(f"layer{i}", (f"layer{i}.",)) for i in range(1, 5)]
    return net, dim, stages, ("fc.",)


def _vgg(name: str) -> Tuple[nn.Module, int, list, Tuple[str, ...]]:
    import torchvision.models as tvm

    net = getattr(tvm, name)(weights=None)
    net.classifier[6] = nn.Identity()
    pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    stages, start = [], 0
    for b, end in enumerate(pools, 1):
        stages.append((f"block{b}", tuple(f"features.{i}." for i in range(start, end + 1))))
        start = end + 1
    stages += [("fc6", ("classifier.0.",)), ("fc7", ("classifier.3.",))]
    return net, 4096, stages, ("classifier.6.",)


def _vit(name: str, image_size: int) -> Tuple[nn.Module, int, list, Tuple[str, ...]]:
    import torchvision.models as tvm

    vit = getattr(tvm, name)(weights=None, image_size=image_size)
    dim = vit.hidden_dim
    vit.heads = nn.Identity()
    n = len(vit.encoder.layers)
    stages = [("embed", ("vit.class_token", "vit.conv_proj.", "vit.encoder.pos_embedding"))]
    stages += [(f"block{i + 1}", (f"vit.encoder.layers.encoder_layer_{i}.",)) for i in range(n)]
    stages.append(("norm", ("vit.encoder.ln.",)))
    return _ViTFeatures(vit), dim, stages, ("heads.",)


def _timm(name: str, image_size: int) -> Tuple[nn.Module, int, list, Tuple[str, ...]]:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"backbone {TIMM_PREFIX}{name} needs the timm package (pip install timm)") from None
    if not timm.is_model(name):
        hint = closest(name, list(timm.list_models()))
        raise ConfigError(f"unknown timm model {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
    except TypeError:  # models without an img_size argument (CNNs)
        net = timm.create_model(name, pretrained=False, num_classes=0)
    stages = [(c, (c + ".",)) for c, m in net.named_children() if any(True for _ in m.parameters())]
    if hasattr(net, "blocks"):
        stages += [(f"block{i + 1}", (f"blocks.{i}.",)) for i in range(len(net.blocks))]
    return net, int(net.num_features), stages, ("head.", "fc.", "classifier.", "head_dist.")


def build_cnn_backbone(name: str, pretrained: str = "", image_size: int = 224, freeze_through: str = "") -> CNNBackbone:
    """A :class:`CNNBackbone` (module docstring), weights from the local file ``pretrained``.

    Raises:
        ConfigError: unknown name or stage. CheckpointError: a weight file missing or not fitting.
    """
    if name in RESNETS:
        net, dim, stages, head = _resnet(name)
    elif name in VGGS:
        net, dim, stages, head = _vgg(name)
    elif name in VITS:
        net, dim, stages, head = _vit(name, image_size)
    elif name.startswith(TIMM_PREFIX):
        net, dim, stages, head = _timm(name[len(TIMM_PREFIX):], image_size)
    else:
        hint = closest(name, list(RESNETS + VGGS + VITS))
        raise ConfigError(f"unknown CNN backbone {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                          + f"; known: {', '.join(known_backbones())}")
    target = net.vit if name in VITS else net
    if pretrained and pretrained.lower() != "random":
        load_backbone_weights(target, pretrained, head)
    else:
        logger.warning(f"backbone {name} has RANDOM weights")
    backbone = CNNBackbone(net, dim, stages, name)
    backbone.freeze_through(freeze_through)
    return backbone


def resolve_cnn_pretrained(name: str, pretrained: str) -> str:
    """The weight file for ``MODEL.BACKBONE.PRETRAINED`` of CNN backbone ``name``.

    ``"random"`` -> ``"random"`` (logged as a warning); a path -> itself; ``""`` -> the ImageNet
    weights the papers use: torchvision's file (IMAGENET1K_V1 first, then other ImageNet-1k
    versions) in ``torch.hub.get_dir()/checkpoints``, timm's in the Hugging Face cache; else a
    download (unless ``HF_HUB_OFFLINE`` / ``EMOLAB_OFFLINE``); else a one-line CheckpointError
    saying which file to put where.
    """
    pretrained = (pretrained or "").strip()
    if pretrained.lower() == "random":
        logger.warning(f"backbone {name}: RANDOM weights (MODEL.BACKBONE.PRETRAINED random)")
        return "random"
    if pretrained:
        return optional_path(pretrained)
    if name.startswith(TIMM_PREFIX):
        return timm_imagenet(name[len(TIMM_PREFIX):])
    if name not in RESNETS + VGGS + VITS:
        build_cnn_backbone(name)  # raises the unknown-name error
    return torchvision_imagenet(name)


def build_backbone_from_config(cfg, weights_from_checkpoint: bool = False) -> CNNBackbone:
    """``MODEL.BACKBONE.{NAME, PRETRAINED}``, ``INPUT.SIZE`` and ``MODEL.CNN.FREEZE_THROUGH``.

    ``weights_from_checkpoint``: the caller overwrites every backbone weight right after (e.g. a
    stage-1 checkpoint), so ``PRETRAINED ""`` needs no ImageNet file.
    """
    size = cfg.INPUT.SIZE
    name, pretrained = cfg.MODEL.BACKBONE.NAME, str(cfg.MODEL.BACKBONE.PRETRAINED)
    if weights_from_checkpoint and not pretrained.strip():
        logger.info(f"backbone {name}: weights come from the checkpoint loaded next")
        pretrained = "random"
    else:
        pretrained = resolve_cnn_pretrained(name, pretrained)
    return build_cnn_backbone(
        name, pretrained=pretrained,
        image_size=int(size[0]) if size else 224, freeze_through=str(cfg.MODEL.CNN.FREEZE_THROUGH),
    )


def param_groups(
    backbone: CNNBackbone,
    heads: Sequence[nn.Module],
    lr: float,
    backbone_lr_mult: float = 1.0,
    head_lr_stages: Sequence[str] = (),
) -> List[dict]:
    """Optimiser parameter groups: the backbone at ``lr * backbone_lr_mult`` (except the stages in
    ``head_lr_stages``), the heads (and those stages) at ``lr``. Frozen parameters and empty groups
    are left out; each group carries a ``name``."""
    fast = {id(p) for p in backbone.stage_parameters(head_lr_stages)}
    slow_params = [p for p in backbone.parameters() if p.requires_grad and id(p) not in fast]
    fast_params = [p for p in backbone.parameters() if p.requires_grad and id(p) in fast]
    head_params = [p for h in heads for p in h.parameters() if p.requires_grad]
    groups = [
        {"name": "backbone", "params": slow_params, "lr": lr * backbone_lr_mult},
        {"name": "heads", "params": fast_params + head_params, "lr": lr},
    ]
    return [g for g in groups if g["params"]]
