"""Compression recipes: quantization, precision conversion, pruning."""
