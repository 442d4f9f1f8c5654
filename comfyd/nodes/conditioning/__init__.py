"""Conditioning nodes (ComfyUI category `conditioning`): text encoding and the edits of CONDITIONING lists."""
