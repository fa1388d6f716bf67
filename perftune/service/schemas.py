"""Request and answer schemas (pydantic): what the OpenAPI page at /docs shows.

A problem names its family (default gemm) and the family's sizes: GEMM's m, n and k as fields
of their own (as they always were), any family's sizes in a ``sizes`` object, and in a GET's
query each size as a parameter of its name. The sizes are checked against the family
(perftune.service.families): a missing, unknown or bad one is a 422 naming it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from perftune.collect.problems import GEMM_DIMS, Problem
from perftune.service.families import (
    DEFAULT_FAMILY,
    FAMILIES,
    MAX_SIZE,
    check_dataflows,
    problem_of,
    unknown_family,
)

Objective = Literal["time", "energy"]
Source = Literal["measured", "client", "model"]
Confidence = Literal["high", "medium", "low"]
DType = Literal["fp16", "bf16", "fp32"]
SizeName = Annotated[str, Field(min_length=1, max_length=64)]
SizeValue = Annotated[int, Field(gt=0, le=MAX_SIZE)]
# Requests: unknown fields refused, and no NaN or infinity (JSON as Python parses it allows
# them; they are never a measurement).
_REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)


def _size(name: str) -> Any:
    return Field(None, gt=0, le=MAX_SIZE, description=f"the size {name} of a family that has "
                 f"one (gemm: C[m, n] = A[m, k] @ B[k, n]); 1 .. {MAX_SIZE:,}, and no operand "
                 f"over 2^31 elements")


def _family() -> Any:
    return Field(DEFAULT_FAMILY, max_length=100, json_schema_extra={"enum": list(FAMILIES)},
                 description="a kernel family (see /v1/families)")


def _sizes() -> Any:
    return Field(None, max_length=16, description="the family's sizes by name (its dims in "
                 '/v1/families), e.g. {"m": 8192, "n": 4096}; m, n and k may be given as '
                 "fields of their own instead")


class _FamilyProblem(BaseModel):
    """A family and its sizes, checked against the family; :attr:`problem` once valid."""

    family: str = _family()
    m: int | None = _size("m")
    n: int | None = _size("n")
    k: int | None = _size("k")
    dtype: DType = "fp16"
    _problem: Problem = PrivateAttr()

    @field_validator("family")
    @classmethod
    def _registered(cls, value: str) -> str:
        reason = unknown_family(value)
        if reason is not None:
            raise ValueError(reason)
        return value

    def _more_sizes(self) -> dict[str, object]:
        """Sizes given besides the m, n and k fields."""
        return {}

    @model_validator(mode="after")
    def _sizes_of_family(self) -> Any:
        sizes: dict[str, object] = {d: getattr(self, d) for d in GEMM_DIMS
                                    if getattr(self, d) is not None}
        for name, value in self._more_sizes().items():
            if name in sizes:
                raise ValueError(f"size {name} is given twice; give each size once")
            sizes[name] = value
        # PerftuneInputError is a ValueError: a 422 naming the size, as the CLI names it
        self._problem = problem_of(self.family, sizes, self.dtype)
        return self

    @property
    def problem(self) -> Problem:
        return self._problem


class ProblemFields(_FamilyProblem):
    """One problem to answer, on one device: what every way of asking has in common."""

    device: str = Field(min_length=1, max_length=200, description="a device_id, see /v1/devices")
    objective: Objective = "time"
    top_k: int = Field(3, ge=1, le=50, description="how many alternatives to list")
    nearest: bool = Field(False, description="an unknown device: answer for the nearest known")
    dataflows: list[str] | None = Field(None, max_length=16,
                                        description="restrict to these dataflows of the family")

    @field_validator("dataflows")
    @classmethod
    def _of_family(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value and "family" in info.data:  # a valid family
            check_dataflows(info.data["family"], value)
        return value


class ProblemQuery(ProblemFields):
    """One problem to answer, as an item of a batch: the family's sizes in ``sizes`` (or
    GEMM's as ``m``, ``n``, ``k``)."""

    model_config = _REQUEST

    sizes: dict[SizeName, SizeValue] | None = _sizes()

    def _more_sizes(self) -> dict[str, object]:
        return dict(self.sizes or {})


class ProblemParams(ProblemFields):
    """One problem to answer, as the query of GET /v1/recommendation: each of the family's
    sizes as a parameter of its name (e.g. ``&batch=1&heads=32``); any parameter that is not
    one of the fields here is taken as a size, and refused unless the family has it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    measure: bool = Field(False, description="if the problem has no measured answer on the "
                          "device and the answer is not of high confidence, queue a tune job "
                          "to measure it (the answer links it; a worker of the device runs "
                          "it, and later answers come from its measurements)")

    def _more_sizes(self) -> dict[str, object]:
        return dict(self.model_extra or {})


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


class JobLink(BaseModel):
    id: str
    status: str
    url: str = Field(description="where to follow it: /v1/jobs/{id}")


class RecommendationPublic(BaseModel):
    """The answer: the best choice, where it came from, how sure, and the runners-up."""

    device: str = Field(description="the device answered for (the nearest one if asked)")
    requested_device: str
    family: str
    problem: str = Field(description="the sizes in the family's order, e.g. m=16,n=4096,k=4096")
    sizes: dict[str, int]
    dtype: str
    objective: Objective
    source: Source = Field(description="measured: an exact stored problem, best row measured "
                           "by perftune; client: the same, but the best row was sent by a "
                           "client and is not verified; model: predicted")
    confidence: Confidence
    best: Choice
    alternatives: list[Choice]
    library_dataflow: str | None = Field(
        None, description="the family's library dataflow (the vendor's or framework's "
        "implementation): the baseline")
    library_ms: float | None = Field(
        None, description="the library dataflow's runtime, from the same source")
    speedup_over_library: float | None = Field(
        None, description="library runtime / best runtime, from the same source")
    speedup_over_cublas: float | None = Field(
        None, description="gemm answers: speedup_over_library (cuBLAS is GEMM's library); "
        "kept for clients of the GEMM-only service")
    bound: str | None = Field(None, description="roofline bound of the best (model answers)")
    spread: float | None = Field(None, description="model answers: the 90% interval of the "
                                 "forest's trees over the predicted runtime of the best")
    distance: float | None = Field(None, description="model answers: distance from the "
                                   "nearest problem measured on the device (root of summed "
                                   "squared log2 size ratios); none when none is measured")
    margin: float | None = Field(None, description="model answers: how much slower the model "
                                 "predicts the next config (any dataflow) than the best, as a "
                                 "fraction; none when the best is the only one")
    job: JobLink | None = Field(None, description="with measure=true: the tune job queued to "
                                "measure this problem on the device")


class BatchCreate(BaseModel):
    model_config = _REQUEST

    problems: list[ProblemQuery] = Field(min_length=1)


class BatchPublic(BaseModel):
    recommendations: list[RecommendationPublic]


class MeasurementCreate(_FamilyProblem):
    """One measurement from a client; stored under its natural key (sent twice, stored once).
    Figures are checked against the device's ceilings before anything is stored."""

    model_config = _REQUEST

    device: str = Field(min_length=1, max_length=200)
    dataflow: str = Field(min_length=1, max_length=100, description="a dataflow of the family")
    dtype: DType
    sizes: dict[SizeName, SizeValue] | None = _sizes()
    config: dict[str, int] = Field(default_factory=dict, max_length=16)
    status: Literal["ok", "wrong_result", "launch_error", "timeout", "compile_error"] = "ok"
    runtime_ms: float | None = Field(None, gt=0, lt=1e7)
    avg_power_w: float | None = Field(None, gt=0, lt=5000)
    energy_per_call_j: float | None = Field(None, gt=0)
    torch_version: str | None = Field(None, max_length=64)
    triton_version: str | None = Field(None, max_length=64)
    cuda_version: str | None = Field(None, max_length=64)
    driver_version: str | None = Field(None, max_length=64)
    job: str | None = Field(None, min_length=1, max_length=64, description="a worker's rows: "
                            "the id of the running tune job they measure (stored as "
                            "perftune's measurements, with the worker's timer)")
    timer: str | None = Field(None, min_length=1, max_length=64, description="with job: the "
                              "timer the worker's collector used")

    @field_validator("dataflow")
    @classmethod
    def _of_family(cls, value: str, info: ValidationInfo) -> str:
        if "family" in info.data:  # a valid family
            check_dataflows(info.data["family"], [value])
        return value

    def _more_sizes(self) -> dict[str, object]:
        return dict(self.sizes or {})


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
    modelled: bool = Field(description="a runtime model was trained on this device")
    modelled_families: list[str] = Field(default_factory=list, description="the families "
                                         "whose runtime model was trained on this device")


class FamilyPublic(BaseModel):
    name: str
    dims: list[str] = Field(description="the sizes a problem of this family names")
    dtypes: list[str]
    library_dataflow: str | None = Field(description="the library's dataflow: the baseline")
    dataflows: dict[str, dict[str, list[int]]] = Field(
        description="per dataflow, each parameter and its choices (none: a library call)")
    measured_problems: int = Field(description="problems with measured rows, over devices "
                                   "and dtypes")
    modelled: bool = Field(description="a runtime model of the family is loaded")
    recommendations: bool = Field(description="whether it can be answered: measured rows or "
                                  "a model")


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


JOB_ID = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
WORKER = Field(min_length=1, max_length=200, description="a name for the worker (host, pid)")


class TuneCreate(_FamilyProblem):
    """A problem to measure on a device: queued as a tune job (one open job per problem)."""

    model_config = _REQUEST

    device: str = Field(min_length=1, max_length=200, description="a device_id, see /v1/devices")
    sizes: dict[SizeName, SizeValue] | None = _sizes()
    budget: int | None = Field(None, ge=1, le=256, description="most measurements (default: "
                               "the service's job_budget)")

    def _more_sizes(self) -> dict[str, object]:
        return dict(self.sizes or {})


class JobPublic(BaseModel):
    id: str
    family: str
    problem: str
    sizes: dict[str, int]
    dtype: str
    device: str
    budget: int
    status: Literal["queued", "running", "done", "failed"]
    attempts: int
    created_at: str
    claimed_by: str | None = None
    claimed_at: str | None = None
    heartbeat_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    lease_s: float = Field(description="a running job whose worker does not heartbeat within "
                           "this many seconds is queued again")
    note: str | None = Field(None, description="why a queued job waits, when it does")
    url: str


class JobClaim(BaseModel):
    model_config = _REQUEST

    device_id: str = Field(min_length=1, max_length=200, description="the worker's device")
    worker: str = WORKER


class JobHeartbeat(BaseModel):
    model_config = _REQUEST

    worker: str = WORKER


class JobDone(BaseModel):
    model_config = _REQUEST

    worker: str = WORKER
    result: dict[str, Any] = Field(description="the worker's answer: best dataflow, config, "
                                   "runtime_ms, measurements")


class JobFailed(BaseModel):
    model_config = _REQUEST

    worker: str = WORKER
    error: str = Field(min_length=1, max_length=4000)
    retry: bool = Field(False, description="the worker stopped before the end: queue the job "
                        "again (until it has had 3 claims)")


# -- the autotune decorator's records (GET/POST /v1/autotune/records) ----------------------------
Hex = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]
Text = Annotated[str, Field(max_length=20_000)]


class AutotuneIdentity(BaseModel):
    """One kernel source on one device and software: what its records hold for."""

    model_config = _REQUEST

    kernel: str = Field(min_length=1, max_length=200, description="the kernel's name")
    source_hash: Hex = Field(description="hash of the kernel's source")
    device_id: str = Field(min_length=1, max_length=200, description="a device_id")
    software_key: str = Field(min_length=1, max_length=500, description="torch, Triton, CUDA")


class AutotuneMeasurementCreate(BaseModel):
    model_config = _REQUEST

    key: Hex
    tuning_key: Text
    key_values: Text
    config: Text
    features: Text | None = None
    runtime_ms: float | None = Field(None, gt=0, description="NULL: the config failed")
    energy_per_call_j: float | None = Field(None, gt=0)
    timer: str = Field(min_length=1, max_length=100)


class AutotuneChoiceCreate(BaseModel):
    model_config = _REQUEST

    key: Hex
    tuning_key: Text
    config: Text
    runtime_ms: float | None = Field(None, gt=0)
    energy_per_call_j: float | None = Field(None, gt=0)
    objective: Literal["time", "energy"] = "time"
    configs: int = Field(ge=1, le=100_000)
    measured: int = Field(ge=0, le=100_000)
    ranked_by: str = Field(min_length=1, max_length=200)


class AutotuneRecordsCreate(AutotuneIdentity):
    """One key's measurements and choice, stored in one transaction."""

    measurements: list[AutotuneMeasurementCreate] = Field(max_length=100_000)
    choice: AutotuneChoiceCreate


class AutotuneRecordsPublic(BaseModel):
    choices: list[dict[str, Any]] = Field(description="the kernel's choices, one per key")
    measurements: list[dict[str, Any]] = Field(description="its measurements")


class AutotuneStoredPublic(BaseModel):
    choice: dict[str, Any] | None = Field(description="the key's stored choice: this one, or "
                                          "one stored first by another process")
