"""Hugging Face model folders written in code (configs, tokenizers, processors) for offline use and tests."""
