"""MetaWorld: the env, its task catalogue and expert-demonstration datasets."""
