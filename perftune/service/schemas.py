"""Request and answer schemas (pydantic): what the OpenAPI page at /docs shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perftune.collect.problems import Problem, check_gemm

Objective = Literal["time", "energy"]
Source = Literal["measured", "client", "model"]
Confidence = Literal["high", "medium", "low"]
DataflowName = Literal["cublas", "triton", "triton_splitk"]
Size = Field(gt=0, le=1 << 24, description="a GEMM size, 1 .. 16,777,216; no operand "
             "(m x k, k x n, m x n) over 2^31 elements")
# Requests: unknown fields refused, and no NaN or infinity (JSON as Python parses it allows
# them; they are never a measurement).
_REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)


class ProblemQuery(BaseModel):
    """One problem to answer: C[m, n] = A[m, k] @ B[k, n]."""

    model_config = _REQUEST

    family: Literal["gemm"] = "gemm"
    device: str = Field(min_length=1, max_length=200, description="a device_id, see /v1/devices")
    m: int = Size
    n: int = Size
    k: int = Size
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    objective: Objective = "time"
    top_k: int = Field(3, ge=1, le=50, description="how many alternatives to list")
    nearest: bool = Field(False, description="an unknown device: answer for the nearest known")
    dataflows: list[DataflowName] | None = Field(None, description="restrict the dataflows")

    @model_validator(mode="after")
    def _indexable(self) -> ProblemQuery:
        check_gemm(Problem.of(self.dtype, m=self.m, n=self.n, k=self.k))  # as the CLI checks
        return self


class Choice(BaseModel):
    """A dataflow and config with its (measured or predicted) figures."""

    dataflow: str
    config: dict[str, int]
    runtime_ms: float
    low_ms: float | None = Field(None, description="lower end of the 90% interval (model)")
    high_ms: float | None = Field(None, description="upper end of the 90% interval (model)")
    avg_power_w: float | None = None
    energy_per_call_j: float | None = None
    client: bool = Field(False, description="a row a client sent (POST /v1/measurements), "
                         "not measured by perftune")


class RecommendationPublic(BaseModel):
    """The answer: the best choice, where it came from, how sure, and the runners-up."""

    device: str = Field(description="the device answered for (the nearest one if asked)")
    requested_device: str
    problem: str
    dtype: str
    objective: Objective
    source: Source = Field(description="measured: an exact stored problem, best row measured "
                           "by perftune; client: the same, but the best row was sent by a "
                           "client and is not verified; model: predicted")
    confidence: Confidence
    best: Choice
    alternatives: list[Choice]
    speedup_over_cublas: float | None = Field(
        None, description="cuBLAS runtime / best runtime, from the same source")
    bound: str | None = Field(None, description="roofline bound of the best (model answers)")


class BatchCreate(BaseModel):
    model_config = _REQUEST

    problems: list[ProblemQuery] = Field(min_length=1)


class BatchPublic(BaseModel):
    recommendations: list[RecommendationPublic]


class MeasurementCreate(BaseModel):
    """One measurement from a client; stored under its natural key (sent twice, stored once).
    Figures are checked against the device's ceilings before anything is stored."""

    model_config = _REQUEST

    device: str = Field(min_length=1, max_length=200)
    family: Literal["gemm"] = "gemm"
    dataflow: DataflowName
    dtype: Literal["fp16", "bf16", "fp32"]
    m: int = Size
    n: int = Size
    k: int = Size
    config: dict[str, int] = Field(default_factory=dict, max_length=16)
    status: Literal["ok", "wrong_result", "launch_error", "timeout", "compile_error"] = "ok"
    runtime_ms: float | None = Field(None, gt=0, lt=1e7)
    avg_power_w: float | None = Field(None, gt=0, lt=5000)
    energy_per_call_j: float | None = Field(None, gt=0)
    torch_version: str | None = Field(None, max_length=64)
    triton_version: str | None = Field(None, max_length=64)
    cuda_version: str | None = Field(None, max_length=64)
    driver_version: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _indexable(self) -> MeasurementCreate:
        check_gemm(Problem.of(self.dtype, m=self.m, n=self.n, k=self.k))  # as the CLI checks
        return self


class MeasurementsCreate(BaseModel):
    model_config = _REQUEST

    measurements: list[MeasurementCreate] = Field(min_length=1)


class IngestPublic(BaseModel):
    received: int
    stored: int = Field(description="new rows; the rest were already stored")


class DevicePublic(BaseModel):
    device_id: str
    name: str
    sm_count: int | None
    memory_bytes: int | None
    peak_tflops_fp16: float | None
    peak_tflops_bf16: float | None
    copy_bandwidth_gbs: float | None
    measurements: int
    modelled: bool = Field(description="the runtime model was trained on this device")


class FamilyPublic(BaseModel):
    name: str
    dims: list[str]
    dataflows: dict[str, list[str]] = Field(description="per dataflow, its parameters")
    recommendations: bool


class ModelPublic(BaseModel):
    kind: str
    target: str = Field("runtime", description="what it predicts: runtime, power or energy")
    family: str
    devices: list[str]
    rows: int
    problems: int
    snapshot: str
    trained_at: str
    accuracy: dict[str, float] | None = Field(
        None, description="what the model was measured to do on the held-out problems "
                    "when it was trained (kept in the model file)")
