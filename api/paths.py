"""The path parameters of the service routes, with the patterns OpenAPI shows and FastAPI
checks (a bad id is a 422 naming it, before any store is asked)."""

from typing import Annotated, Any

from fastapi import Body, Path

from api.schemas import (
    CAMPAIGN_ID_PATTERN,
    ID_PATTERN,
    MODEL_VERSION_PATTERN,
    NOTIFICATION_ID_PATTERN,
)
from pipelines.template_model import TEMPLATE_ID_PATTERN

UserId = Annotated[str, Path(pattern=ID_PATTERN)]
DeviceId = Annotated[str, Path(pattern=ID_PATTERN)]
CampaignId = Annotated[str, Path(pattern=CAMPAIGN_ID_PATTERN)]
NotificationId = Annotated[str, Path(pattern=NOTIFICATION_ID_PATTERN)]
ModelVersion = Annotated[str, Path(pattern=MODEL_VERSION_PATTERN)]
TemplateId = Annotated[str, Path(pattern=TEMPLATE_ID_PATTERN)]
TemplateBody = Annotated[dict[str, Any], Body()]  # a `TemplateIn`, checked by the handler
