"""Conversation features (IEMOCAP/MELD pickled 7-tuple): the file format, the datasets, dialogue loaders."""
