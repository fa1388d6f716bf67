"""GET /v1/devices, /v1/families and /v1/models: what the service knows."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from perftune.service.deps import KnowledgeDep, require_read_token
from perftune.service.recommend import family_spaces
from perftune.service.schemas import DevicePublic, FamilyPublic, ModelPublic

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(require_read_token)])


@router.get("/devices", response_model=list[DevicePublic])
def get_devices(knowledge: KnowledgeDep) -> list[DevicePublic]:
    modelled = set(knowledge.predictor.meta["devices"])
    return [DevicePublic(device_id=r.device_id, name=r.name,
                         sm_count=r.sm_count, memory_bytes=r.memory_bytes,
                         peak_tflops_fp16=r.peak_tflops_fp16, peak_tflops_bf16=r.peak_tflops_bf16,
                         copy_bandwidth_gbs=r.copy_bandwidth_gbs,
                         measurements=knowledge.counts.get(r.device_id, 0),
                         modelled=r.device_id in modelled)
            for r in knowledge.devices.itertuples(index=False)]


@router.get("/families", response_model=list[FamilyPublic])
def get_families() -> list[FamilyPublic]:
    return [FamilyPublic(name=name, dims=["m", "n", "k"] if name == "gemm" else [],
                         dataflows={d: sorted(space) for d, space in dataflows.items()},
                         recommendations=name == "gemm")
            for name, dataflows in family_spaces().items()]


@router.get("/models", response_model=list[ModelPublic])
def get_models(knowledge: KnowledgeDep) -> list[ModelPublic]:
    predictor = knowledge.predictor
    metas = [predictor.meta] + [meta for _, meta in predictor.energy_models.values()]
    return [ModelPublic(kind=meta["kind"], target=meta.get("target", "runtime"),
                        family=meta["family"], devices=meta["devices"], rows=meta["rows"],
                        problems=meta["problems"], snapshot=meta["snapshot"],
                        trained_at=meta["trained_at"],
                        accuracy=meta.get("accuracy"))
            for meta in metas]
