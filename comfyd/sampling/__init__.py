"""ComfyUI's sampling, reimplemented on plain tensors (no I/O, no node or engine state).

- `sigmas`: the discrete sigma table, UNet timestep mapping and the schedulers;
- `noise`: initial, ancestral and Brownian-tree noise drawn as ComfyUI draws it;
- `samplers`: the sampler functions by ComfyUI name;
- `denoiser` / `cfg`: the UNet call and classifier-free guidance over composed conditioning;
- `ksampler`: `common_ksampler`, what KSampler and KSamplerAdvanced run;
- `latent_resize`: LatentUpscale's resizing methods.
"""
