"""Sampling nodes (ComfyUI category `sampling`): KSampler and its relatives."""
