"""Self-supervised objectives: one file per loss family, each with its formula and source."""
