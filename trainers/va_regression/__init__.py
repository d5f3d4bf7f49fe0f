"""Two-stage valence-arousal regression learned from categorical labels (NRC-VAD lexicon)."""
