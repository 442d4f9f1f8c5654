"""Latent nodes (ComfyUI category `latent`): empty latents, scaling, batches, masks, VAE encode/decode."""
