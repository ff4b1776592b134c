"""Hugging Face checkpoint -> quantized GGUF (later issue)."""
