"""open_clip adapter: CLIP backbones by name or checkpoint, with prompt-ready encoders.

>>> from clip import load_clip
>>> clip = load_clip("emolab-tiny-vit")            # random weights, nothing downloaded
>>> tokens = clip.tokenize(["a photo of a cat."])  # [1, 77]
>>> clip.encode_text(tokens).shape
torch.Size([1, 64])

``ClipBackbone.encode_text_embeddings`` takes token embeddings (learned prompts) and
``ClipBackbone.encode_image(images, prompts=...)`` takes extra ViT prompt tokens.
"""
from .backbone import ClipBackbone
from .loading import load_clip
from .names import available_models, resolve_model_name

__all__ = ["ClipBackbone", "load_clip", "available_models", "resolve_model_name"]
