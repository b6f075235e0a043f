"""What the notebooks import: encoded test splits, per-query retrieval results, attention
rollout and word-to-region maps, and the figures drawn from them."""
