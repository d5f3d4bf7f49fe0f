"""EW-MTCNN: emotion-wheel prior layer, multi-task classification + emotion distribution learning."""
