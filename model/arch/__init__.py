"""The world model's modules: DiT experts, camera encoder, interaction extractor, KV cache."""
