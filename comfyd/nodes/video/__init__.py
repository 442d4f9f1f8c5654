"""Video and audio nodes (ComfyUI categories `image/video`, `audio`)."""
