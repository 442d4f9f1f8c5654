"""Loader nodes (ComfyUI category `loaders`): checkpoints, VAEs, LoRAs, and the models they feed."""
