"""The values that travel on MODEL, CLIP and VAE links.

A handle is a light reference to weights the model manager owns: two workflows that load the
same checkpoint get handles onto the same modules. LoRA, merge and model-patch nodes return *new*
handles that carry extra patches; weight patches and UNet hooks are applied to the shared module
only for the duration of a `patched()` block and the base weights are restored exactly
afterwards. Sampling-side patches (model sampling, guidance) are plain values the sampler reads.

Other link values follow ComfyUI's shapes:
- CONDITIONING: list of `[tensor [B, tokens, dim], {"pooled_output": tensor | None, ...}]`
- LATENT: `{"samples": tensor [B, 4, H/8, W/8], "noise_mask"?: tensor, "batch_index"?: list[int]}`
  (samples are in the VAE's own scale: the sampler multiplies by `latent_scale` on the way in)
- IMAGE: float32 tensor [B, H, W, C] in 0..1;  MASK: float32 tensor [B, H, W] (or [H, W]).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from comfyd.models import families
from comfyd.models.clip_residency import ClipResidency
from comfyd.models.device_gate import DeviceGate
from comfyd.sampling.guidance import Guidance
from comfyd.sampling.model_sampling import DiscreteModelSampling
from comfyd.sampling.protocols import VectorConditioning


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA applied at a strength. `key` identifies the file (path + mtime)."""

    key: str
    strength: float


@dataclass(frozen=True)
class HypernetworkPatch:
    """One hypernetwork at a strength, on a MODEL's attention (see comfyd.models.hypernetwork).
    It travels with the LoRA patches so that the patcher serialises jobs on it in the same way."""

    key: str
    strength: float
    layers: Any = field(compare=False, repr=False)  # comfyd.models.hypernetwork.Hypernetwork


@dataclass(frozen=True)
class MergePatch:
    """Another model's weights merged in (ModelMerge*, CLIPMerge*): every weight both models
    hold becomes `w * strength_model + strength_patch * w2`, where w2 is the other model's weight
    with its own patches applied (ComfyUI's add_patches of its key patches); where the shapes
    differ, only `w * strength_model`, as ComfyUI computes it.

    `block_ratios` (ModelMergeBlocks): (original-key prefix, ratio) pairs; a weight takes the
    ratio of its longest matching prefix (else `default_ratio`) as strength_model, and 1 - ratio
    as strength_patch. The source modules and patcher are references, not part of its identity.
    """

    source_key: str
    source_patches: tuple[Any, ...]
    strength_patch: float
    strength_model: float
    block_ratios: tuple[tuple[str, float], ...] = ()
    default_ratio: float = 1.0
    source_modules: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    source_patcher: Any = field(default=None, compare=False, hash=False, repr=False)

    def strengths(self, original_key: str | None) -> tuple[float, float]:
        """(strength_patch, strength_model) for one weight, by its original-layout key."""
        if not self.block_ratios:
            return self.strength_patch, self.strength_model
        ratio, longest = self.default_ratio, 0
        for prefix, value in self.block_ratios:
            if original_key is not None and original_key.startswith(prefix) and len(prefix) > longest:
                ratio, longest = value, len(prefix)
        return 1.0 - ratio, ratio


class UnetHook(Protocol):
    """A UNet-side patch (comfyd.models.unet_hooks): installs forward hooks, returns their handles."""

    def install(self, unet: Any) -> list[Any]: ...


class WeightPatcher(Protocol):
    """Applies patches (LoRA, merges, UNet hooks) to a module in place and restores the base
    weights afterwards."""

    def apply(self, module: Any, patches: tuple[Any, ...]) -> None: ...

    def restore(self, module: Any) -> None: ...


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: the denoising UNet (diffusers UNet2DConditionModel) and how to drive it.

    It is the `comfyd.sampling.protocols.SamplingModel` the sampler takes: the network lent by
    `patched()`, its model sampling, latent scaling and vector conditioning (from its family).
    """

    key: str  # cache key of the base weights (resolved checkpoint path + size + mtime)
    family: str  # a registered family name (comfyd.models.families)
    prediction: str  # "eps" | "v" (or another of comfyd.sampling.model_sampling.PREDICTIONS)
    unet: Any
    latent_scale: float  # the family's latent scale factor (or the diffusers VAE's own)
    device: Any  # torch.device
    dtype: Any  # torch.dtype the UNet runs in
    # Weight patches in the order they apply: LoraPatch, HypernetworkPatch and MergePatch.
    loras: tuple[Any, ...] = ()
    patcher: WeightPatcher | None = field(default=None, compare=False, repr=False)
    gate: DeviceGate | None = field(default=None, compare=False, repr=False)
    # The process's step batcher (comfyd.sampling.step_batcher): concurrent samplings share calls.
    batcher: Any = field(default=None, compare=False, repr=False)
    # Linear beta schedule of the discrete EPS/V models (ComfyUI's ModelSamplingDiscrete).
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    latent_shift: float = 0.0  # sampler space = (latent - shift) * scale
    # A model sampling other than the discrete beta schedule (flow models, ModelSampling* nodes).
    sampling: Any = None
    zsnr: bool = False  # the sigma table rescaled to zero terminal SNR (ModelSamplingDiscrete)
    unet_hooks: tuple[Any, ...] = ()  # UnetHook patches (FreeU, ...), installed by patched()
    guidance: Guidance = Guidance()  # sampler CFG / post-CFG patches (RescaleCFG, PerpNeg, ...)
    # Turns the noise mask into the mask of each step (DifferentialDiffusion); None: as given.
    denoise_mask_function: Any = None

    @property
    def model_sampling(self) -> Any:
        if self.sampling is not None:
            return self.sampling
        return DiscreteModelSampling(
            self.prediction, self.beta_start, self.beta_end, self.num_train_timesteps, self.zsnr
        )

    def with_sampling(self, sampling: Any) -> ModelHandle:
        # The family may keep its own sampling behaviour under a new schedule (LTX-Video's
        # masked sampling keeps the original latent whichever ModelSampling node ran).
        if self.family in families.names():  # (tests' stand-in families: as given)
            sampling = families.get(self.family).adapt_model_sampling(sampling)
        return replace(self, sampling=sampling, prediction=sampling.prediction)

    @property
    def latent_format(self) -> families.LatentFormat | None:
        """The family's latent format (preview factors); None for a family not registered."""
        try:
            return families.get(self.family).latent
        except ValueError:
            return None

    @property
    def vector_conditioning(self) -> VectorConditioning | None:
        """The family's builder of the UNet's vector input (None: the UNet has none)."""
        return families.get(self.family).vector_builder(getattr(self.unet, "config", None) or {})

    def with_loras(self, *patches: Any) -> ModelHandle:
        """A handle with more weight patches (LoraPatch, HypernetworkPatch, MergePatch) after this one's."""
        return replace(self, loras=self.loras + tuple(patches))

    def with_unet_hook(self, hook: Any) -> ModelHandle:
        return replace(self, unet_hooks=self.unet_hooks + (hook,))

    def merged_from(self, other: ModelHandle, strength_patch: float, strength_model: float, **blocks: Any) -> ModelHandle:
        """This model with `other`'s UNet weights merged in (see MergePatch)."""
        patch = MergePatch(
            other.key, other.loras, float(strength_patch), float(strength_model), **blocks,
            source_modules={"unet": other.unet}, source_patcher=other.patcher,
        )  # fmt: skip
        return self.with_loras(patch)

    @property
    def patches(self) -> tuple[Any, ...]:
        """Everything the patcher applies to the UNet: weight patches, then hooks."""
        return self.loras + self.unet_hooks

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Sampling runs may share network calls only on the same weights with the same patches."""
        return (self.key, id(self.unet), self.patches)

    @contextmanager
    def device_turn(self) -> Iterator[None]:
        """The device gate alone: one batched network call at a time (see the step batcher)."""
        with held(self.gate):
            yield

    @contextmanager
    def patched(self, gate: bool = True) -> Iterator[Any]:
        """The UNet with this handle's weight patches and hooks applied; restored on exit.

        With a patcher, a handle without patches also enters it, so that it never runs while
        another job has the shared UNet patched (the patcher serialises differing patch sets).
        The device gate is entered first (see comfyd.models.device_gate). With `gate=False`
        (batched sampling: each network call takes the gate itself) it is not entered: the
        patcher may wait here for runs whose calls need the gate.
        """
        with held(self.gate) if gate else nullcontext():
            if self.patcher is None:
                if self.loras:
                    raise ValueError("this model has weight patches but no patcher to apply them")
                with hooks_installed(self.unet, self.unet_hooks):
                    yield self.unet
                return
            self.patcher.apply(self.unet, self.patches)
            try:
                yield self.unet
            finally:
                self.patcher.restore(self.unet)


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: tokenizer(s) and text encoder(s).

    SD1: one CLIPTextModel (`encoders=("l",)`). SD2: OpenCLIP-H as a CLIPTextModel. SDXL:
    CLIP-L (CLIPTextModel) and OpenCLIP-bigG (CLIPTextModelWithProjection), `("l", "g")`.
    """

    key: str
    family: str
    tokenizers: dict[str, Any]  # "l" / "g" -> transformers CLIPTokenizer
    text_encoders: dict[str, Any]  # "l" / "g" -> transformers CLIPTextModel(WithProjection)
    device: Any
    dtype: Any
    layer_idx: int | None = None  # None = last layer; -2 = penultimate (CLIPSetLastLayer)
    loras: tuple[Any, ...] = ()  # LoraPatch and MergePatch, in the order they apply
    patcher: WeightPatcher | None = field(default=None, compare=False, repr=False)
    gate: DeviceGate | None = field(default=None, compare=False, repr=False)
    embedding_dirs: tuple[str, ...] = ()
    # Where the encoders live (comfyd.models.clip_residency), shared by every handle onto them;
    # None: always on `device`.
    residency: ClipResidency | None = field(default=None, compare=False, repr=False)
    # Tokenizer options by ComfyUI's name ("t5xxl_min_padding", ...: T5TokenizerOptions), sorted
    # (name, value) pairs so the handle stays hashable; see comfyd.models.tokenizer_options.
    tokenizer_options: tuple[tuple[str, int], ...] = ()

    def with_loras(self, *patches: Any) -> ClipHandle:
        return replace(self, loras=self.loras + tuple(patches))

    def merged_from(self, other: ClipHandle, strength_patch: float, strength_model: float) -> ClipHandle:
        """These text encoders with `other`'s merged in, encoder by encoder (see MergePatch)."""
        patch = MergePatch(
            other.key, other.loras, float(strength_patch), float(strength_model),
            source_modules=dict(other.text_encoders), source_patcher=other.patcher,
        )  # fmt: skip
        return self.with_loras(patch)

    def with_layer(self, layer_idx: int | None) -> ClipHandle:
        return replace(self, layer_idx=layer_idx)

    def with_tokenizer_options(self, options: Mapping[str, int]) -> ClipHandle:
        """A handle whose tokenizers read `options` over the ones already set (ComfyUI's
        CLIP.clone then set_tokenizer_option)."""
        merged = {**dict(self.tokenizer_options), **{str(k): int(v) for k, v in options.items()}}
        return replace(self, tokenizer_options=tuple(sorted(merged.items())))

    @contextmanager
    def patched(self) -> Iterator[dict[str, Any]]:
        """The text encoders with this handle's LoRAs applied (see ModelHandle.patched), on the
        device: encoders the model manager offloaded to the host come back first."""
        with held(self.gate), self.residency.in_use() if self.residency is not None else nullcontext():
            if self.patcher is None:
                yield self.text_encoders
                return
            applied: list[Any] = []
            try:
                for enc in self.text_encoders.values():
                    self.patcher.apply(enc, self.loras)
                    applied.append(enc)
                yield self.text_encoders
            finally:
                # Only what was entered is left, even when entering the second encoder failed.
                for enc in applied:
                    self.patcher.restore(enc)


@dataclass(frozen=True)
class VaeHandle:
    """VAE: a diffusers AutoencoderKL. Latents on links are unscaled (ComfyUI's convention)."""

    key: str
    family: str
    vae: Any
    device: Any
    dtype: Any
    latent_channels: int = 4
    downscale: int = 8
    gate: DeviceGate | None = field(default=None, compare=False, repr=False)

    @contextmanager
    def computing(self) -> Iterator[Any]:
        """The VAE, while this job holds the device gate."""
        with held(self.gate):
            yield self.vae


@contextmanager
def hooks_installed(module: Any, hooks: tuple[Any, ...]) -> Iterator[None]:
    """UNet hooks installed on `module` for the block (without a patcher: not shared)."""
    handles: list[Any] = []
    try:
        for hook in hooks:
            handles.extend(hook.install(module))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def held(gate: DeviceGate | None) -> Iterator[None]:
    if gate is None:
        yield
        return
    with gate.held():
        yield
