"""UniEmoX: CLIP-guided masked pre-training on EmoSet (``UniEmoXPretrain``), then ViT fine-tuning (``UniEmoX``)."""
