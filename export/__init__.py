"""Everything after a trained checkpoint: SavedModel, TFLite, edge bundle."""
