"""Mask nodes (ComfyUI category `mask`)."""
