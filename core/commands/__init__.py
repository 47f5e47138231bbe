"""One module per CLI subcommand; each exposes ``run(cfg: DictConfig)``."""
