"""Build tools, not installed with the package: the corpus grammar and the pre-training of the embedded model
(``python -m tools.pretrain``, run from the repository root)."""
