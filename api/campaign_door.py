"""`POST /v1/campaigns` past the contract: the templates' check, then the store, where the
same campaign posted again is a no-op (200) and another body under its id a 409."""

from __future__ import annotations

import json

from api.errors import conflict
from api.schemas import CampaignAccepted, CampaignIn
from api.templates import TemplateBook
from cluster.state.campaigns import CampaignStore


async def accept_campaign(
    campaign: CampaignIn, templates: TemplateBook, campaigns: CampaignStore
) -> CampaignAccepted:
    """Check the variants against the templates in force (422), store the campaign, and
    answer its state; `created` is False for a replay of the same definition."""
    spec = campaign.model_dump(mode="json")
    await templates.check_campaign(spec)
    created, previous = await campaigns.create(spec)
    if not created and (previous is None or json.loads(previous) != spec):
        raise conflict("campaign_id", f"campaign {campaign.campaign_id!r} exists")
    status = await campaigns.get(campaign.campaign_id)
    return CampaignAccepted(
        campaign_id=campaign.campaign_id,
        state=status["state"],
        send_at=status["send_at"],
        created=created,
    )
