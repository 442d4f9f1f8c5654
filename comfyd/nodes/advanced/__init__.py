"""Model patches and advanced nodes (ComfyUI category `advanced`): model sampling, merging, guidance."""
