"""Prompt learner and CoOp/CoCoOp models on a tiny random CLIP."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.components.context import CONTEXT_GENERATORS, ConditionalContext, StaticContext
from trainers.components.prompt_learner import PromptedCLIP, PromptLearner, context_from_words

CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


def _learner(clip, words="a photo of a", position="end", gen="StaticContext", **kw):
    init, n = context_from_words(clip, words)
    g = CONTEXT_GENERATORS.get(gen)(n_ctx=n, ctx_dim=clip.text_width, vis_dim=clip.embed_dim,
                                    n_cls=len(CLASSES), init=init, **kw)
    return PromptLearner(clip, CLASSES, g, n, position=position)


@pytest.mark.parametrize(
    "position, text",
    [("end", "a photo of a {}."), ("front", "{} a photo of a."), ("middle", "a photo {} of a.")],
)
def test_prompt_layout_matches_literal_text(tiny_clip, position, text):
    """With the context initialised from words, each position builds exactly the embedding of the text."""
    pl = _learner(tiny_clip, position=position)
    prompts, eot = pl()
    tokens = tiny_clip.tokenize([text.format(c) for c in CLASSES])
    ref = tiny_clip.embed_tokens(tokens)[:, : prompts.shape[2]]
    assert torch.equal(eot, tiny_clip.eot_positions(tokens))
    assert torch.allclose(prompts[0], ref, atol=1e-6)


def test_coop_text_features_equal_clip_encode_text(tiny_clip):
    model = PromptedCLIP(tiny_clip, _learner(tiny_clip))
    feats = model.text_features()[0]
    ref = F.normalize(tiny_clip.encode_text(tiny_clip.tokenize([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    assert torch.allclose(feats, ref, atol=1e-5)


def test_batched_cocoop_equals_per_image_loop(tiny_clip):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny_clip, _learner(tiny_clip, gen="ConditionalContext", hidden_ratio=4)).eval()
    images = torch.randn(5, 3, 32, 32)
    batched = model(images)
    img = model.image_features(images)
    loop = []
    for i in range(5):  # the reference algorithm: one text-encoder pass per image
        prompts, eot = model.prompt_learner(img[i : i + 1])
        txt = F.normalize(tiny_clip.encode_text_embeddings(prompts[0], eot, truncate=False), dim=-1)
        loop.append(tiny_clip.logit_scale.exp() * img[i] @ txt.t())
    assert batched.shape == (5, len(CLASSES))
    assert torch.allclose(batched, torch.stack(loop), atol=1e-5)


@pytest.mark.parametrize("gen", CONTEXT_GENERATORS.names())  # every registered generator, a new one included
def test_gradients_reach_only_the_prompt_learner(tiny_clip, gen):
    model = PromptedCLIP(tiny_clip, _learner(tiny_clip, gen=gen))
    model.train()
    assert not tiny_clip.training, "CLIP must stay in eval mode"
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("prompt_learner."):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_saved_prompt_learner_has_only_trainable_state_and_loads_on_other_classes(tiny_clip):
    pl = _learner(tiny_clip)
    state = pl.state_dict()
    assert list(state) == ["context.ctx"]
    other = PromptLearner(tiny_clip, ["joy", "surprise"], StaticContext(n_ctx=4, ctx_dim=tiny_clip.text_width, n_cls=2), 4)
    other.load_state_dict(state)
    assert torch.equal(other.context.ctx, pl.context.ctx)
    assert other()[0].shape[1] == 2


def test_class_specific_context_shapes(tiny_clip):
    g = StaticContext(n_ctx=3, ctx_dim=tiny_clip.text_width, n_cls=len(CLASSES), csc=True)
    prompts, _ = PromptLearner(tiny_clip, CLASSES, g, 3)()
    assert g.ctx.shape == (len(CLASSES), 3, tiny_clip.text_width)
    assert prompts.shape[:2] == (1, len(CLASSES))
    assert torch.equal(prompts[0, 2, 1:4], g.ctx[2].detach())


def test_conditional_context_depends_on_the_image():
    g = ConditionalContext(n_ctx=2, ctx_dim=8, vis_dim=16, hidden_ratio=4)
    out = g(torch.randn(3, 16))
    assert out.shape == (3, 1, 2, 8)
    assert not torch.allclose(out[0], out[1])
