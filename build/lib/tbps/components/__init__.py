"""Reusable parts that heads build on: Gaussian embeddings, momentum encoders with feature
memories, and caption augmentation (CRUE uses all three; UCFA will reuse them)."""
