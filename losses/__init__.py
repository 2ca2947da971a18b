"""ctbundles.losses: the papers' training objectives (one module per paper)."""
