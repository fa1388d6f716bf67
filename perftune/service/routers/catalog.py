"""GET /v1/devices, /v1/families and /v1/models: what the service knows."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from perftune.service.deps import KnowledgeDep, require_read_token
from perftune.service.families import FAMILIES, family_spaces, kernel
from perftune.service.schemas import DevicePublic, FamilyPublic, ModelPublic

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(require_read_token)])


@router.get("/devices", response_model=list[DevicePublic])
def get_devices(knowledge: KnowledgeDep) -> list[DevicePublic]:
    trained = {family: set(p.meta["devices"]) for family, p in knowledge.predictors.items()}
    devices = []
    for r in knowledge.devices.itertuples(index=False):
        families = [family for family, on in trained.items() if r.device_id in on]
        devices.append(DevicePublic(
            device_id=r.device_id, name=r.name, sm_count=r.sm_count,
            memory_bytes=r.memory_bytes, peak_tflops_fp16=r.peak_tflops_fp16,
            peak_tflops_bf16=r.peak_tflops_bf16, copy_bandwidth_gbs=r.copy_bandwidth_gbs,
            measurements=knowledge.counts.get(r.device_id, 0), modelled=bool(families),
            modelled_families=families))
    return devices


@router.get("/families", response_model=list[FamilyPublic])
def get_families(knowledge: KnowledgeDep) -> list[FamilyPublic]:
    """Every family the service answers for: its sizes, dtypes, library dataflow, dataflows
    with their parameter spaces, and whether it can be answered (measured rows or a model)."""
    families = []
    for name, spaces in family_spaces().items():
        kind = kernel(name)
        measured = knowledge.measured_problems(name)
        modelled = name in knowledge.predictors
        ranks = modelled and not knowledge.catalogs[name].candidates.empty  # configs to rank
        families.append(FamilyPublic(
            name=name, dims=list(kind.dims), dtypes=list(kind.dtypes),
            library_dataflow=kind.library_dataflow,
            dataflows={d: {p: list(choices) for p, choices in space.items()}
                       for d, space in spaces.items()},
            measured_problems=measured, modelled=modelled,
            recommendations=bool(measured) or ranks))
    return families


@router.get("/models", response_model=list[ModelPublic])
def get_models(knowledge: KnowledgeDep) -> list[ModelPublic]:
    """Every family's loaded models (runtime, and power and energy where there are some),
    with what each was measured to do on the held-out problems."""
    metas = []
    for family in FAMILIES:
        predictor = knowledge.predictors.get(family)
        if predictor is not None:
            metas += [predictor.meta] + [meta for _, meta in predictor.energy_models.values()]
    return [ModelPublic(kind=meta["kind"], target=meta.get("target", "runtime"),
                        family=meta["family"], devices=meta["devices"], rows=meta["rows"],
                        problems=meta["problems"], snapshot=meta["snapshot"],
                        trained_at=meta["trained_at"],
                        accuracy=meta.get("accuracy"))
            for meta in metas]
