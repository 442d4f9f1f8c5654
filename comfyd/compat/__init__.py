"""Compatibility layer for ComfyUI custom-node packs.

ComfyUI packs import ComfyUI's own module names (`folder_paths`, `comfy.utils`,
`comfy.model_management`, `node_helpers`, `nodes`, `server`). This package is where comfyd
provides the subset of those names that packs use, mapped onto comfyd's engine, models and
settings, and where a `custom_nodes/` folder is loaded. Nothing outside the custom-node loader
imports it.
"""
