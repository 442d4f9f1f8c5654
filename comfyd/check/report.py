"""The answer of `comfyd check` and POST /v1/check."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ErrorKind = Literal["missing_model", "missing_input", "unknown_node", "invalid_value", "limit", "unsupported_family"]
EXIT_OK = 0
EXIT_INVALID = 2
EXIT_NEEDS_MODELS = 3


class CheckError(BaseModel):
    kind: ErrorKind
    node_id: str | None = None
    class_type: str | None = None
    input: str | None = None
    message: str


class MissingModel(BaseModel):
    node_id: str
    class_type: str
    input: str
    name: str
    folder: str
    # Where comfyd would look first (models_dir/<folder>/<name>).
    expected_path: str
    url: str | None = None
    hash: str | None = None
    hash_type: str | None = None


class UnknownNodeEntry(BaseModel):
    node_id: str
    class_type: str
    pack: str | None = None


class ModelFileEntry(BaseModel):
    node_id: str
    class_type: str
    input: str
    path: str
    family: str
    supported: bool
    parameters: int | None = None
    weight_bytes: int | None = None


class Estimate(BaseModel):
    """Rough figures; see comfyd/check/estimate.py for the formula."""

    weight_bytes: int = 0
    latent_bytes: int = 0
    activation_bytes: int = 0
    peak_device_bytes: int = 0
    # Sum over samplers of steps x latent pixels x batch (x frames), in millions.
    work_mpixel_steps: float = 0.0
    device_memory_bytes: int | None = None
    fits: bool | None = None
    complete: bool = True
    notes: list[str] = Field(default_factory=list)


class CheckReport(BaseModel):
    ok: bool
    format: str
    errors: list[CheckError] = Field(default_factory=list)
    missing_models: list[MissingModel] = Field(default_factory=list)
    unknown_nodes: list[UnknownNodeEntry] = Field(default_factory=list)
    estimate: Estimate = Field(default_factory=Estimate)
    models: list[ModelFileEntry] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        if all(e.kind == "missing_model" for e in self.errors):
            return EXIT_NEEDS_MODELS
        return EXIT_INVALID

    def summary_lines(self) -> list[str]:
        lines = [f"format: {self.format}"]
        for error in self.errors:
            where = f"node {error.node_id} ({error.class_type})" if error.node_id else "workflow"
            field = f" input {error.input}" if error.input else ""
            lines.append(f"{error.kind}: {where}{field}: {error.message}")
        for model in self.models:
            support = "supported" if model.supported else "NOT supported by comfyd yet"
            lines.append(f"model {model.path}: family {model.family} ({support})")
        est = self.estimate
        lines.append(
            f"estimate: peak device memory ~{est.peak_device_bytes / 2**30:.2f} GiB "
            f"(weights {est.weight_bytes / 2**30:.2f} GiB), work {est.work_mpixel_steps:.1f} Mpixel-steps"
            + ("" if est.complete else " (incomplete: some model files are missing)")
            + ("" if est.fits is None else (", fits the device" if est.fits else ", DOES NOT fit the device"))
        )
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append("ok" if self.ok else ("runnable once the missing models are added" if self.exit_code == EXIT_NEEDS_MODELS else "invalid"))
        return lines

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
