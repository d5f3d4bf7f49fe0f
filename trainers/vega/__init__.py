"""VEGA-anchor: conversation features aligned to CLIP visual emotion anchors."""
