"""Modules served to ComfyUI node packs under ComfyUI's own import names (see comfyd.compat.aliases).

Each module here implements the subset of its ComfyUI namesake that the popular packs use,
on top of comfyd's settings and node context. Nothing in comfyd imports these for itself.
"""
