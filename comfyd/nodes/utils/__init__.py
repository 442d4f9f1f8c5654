"""Value nodes (ComfyUI category `utils`): the Primitive* constants and string helpers."""
