"""Model handling: sentence embeddings, LLM checkpoints, pruning and batched scoring."""
