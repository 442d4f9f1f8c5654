"""Image nodes (ComfyUI category `image`): loading, saving, previews and pixel transforms."""
