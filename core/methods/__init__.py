"""Methods: trainable modules + objective + EMA teacher pairs, driven by the one engine."""
