"""The simulator: a synthetic population for Herald, and the hidden engagement model that
"is" its users.

- `models.synth.population` — `synthesize(users, seed, out_dir)` writes users, devices,
  wishlists, products and `ground_truth.json`; `load_population(out_dir)` reads them back as
  the users frame (`models.snapshot`) plus `timezone`.
- `models.synth.world` — the hidden engagement model (`engagement_probability`,
  `click_probability`, `simulate_feedback`, `ground_truth`): what simulated users do with a
  notification. Rankers never read it; training draws feedback from it, evaluators judge by
  it.
- `models.synth.geography` — countries, locales, time zones and the fixed `REFERENCE_TIME`,
  shared by both; `models.synth.tokens` — APNs / FCM token shapes in bulk.

This package re-exports their public names, so `from models import synth` and
`synth.synthesize(...)`, `synth.CATEGORIES`, ... read as one module. The domain enums
themselves (`CATEGORIES`, `VARIANT_STYLES`, `PLATFORMS`) live in `cluster.vocabulary`;
production code imports them from there, not from a simulator.
"""

from __future__ import annotations

from cluster.vocabulary import CATEGORIES, PLATFORMS, VARIANT_STYLES
from models.synth.geography import COUNTRIES, DAY_S, REFERENCE_TIME, tz_offsets_hours
from models.synth.population import (
    CATEGORY_PRICE,
    CATEGORY_SHARE,
    DIRICHLET_CONCENTRATION,
    DORMANT_IDLE_DAYS,
    DORMANT_SHARE,
    EXTRA_DEVICES_MEAN,
    MAX_DEVICES,
    MAX_IDLE_DAYS,
    NO_DEVICE_SHARE,
    TIER_IDLE_DAYS,
    TIER_ORDERS_MEAN,
    TIER_SHARE,
    TIERS,
    WEB_SHARE_EXTRA,
    WISHLIST_EMPTY_SHARE,
    WISHLIST_MAX_ITEMS,
    WISHLIST_MEAN_ITEMS,
    ZIPF_EXPONENT,
    SynthPaths,
    load_population,
    synthesize,
)
from models.synth.tokens import apns_tokens, fcm_tokens
from models.synth.world import (
    COEFFICIENTS,
    FEATURES,
    MISSING_IDLE_DAYS,
    click_probability,
    engagement_probability,
    ground_truth,
    simulate_feedback,
)

__all__ = [
    "CATEGORIES",
    "CATEGORY_PRICE",
    "CATEGORY_SHARE",
    "COEFFICIENTS",
    "COUNTRIES",
    "DAY_S",
    "DIRICHLET_CONCENTRATION",
    "DORMANT_IDLE_DAYS",
    "DORMANT_SHARE",
    "EXTRA_DEVICES_MEAN",
    "FEATURES",
    "MAX_DEVICES",
    "MAX_IDLE_DAYS",
    "MISSING_IDLE_DAYS",
    "NO_DEVICE_SHARE",
    "PLATFORMS",
    "REFERENCE_TIME",
    "TIERS",
    "TIER_IDLE_DAYS",
    "TIER_ORDERS_MEAN",
    "TIER_SHARE",
    "VARIANT_STYLES",
    "WEB_SHARE_EXTRA",
    "WISHLIST_EMPTY_SHARE",
    "WISHLIST_MAX_ITEMS",
    "WISHLIST_MEAN_ITEMS",
    "ZIPF_EXPONENT",
    "SynthPaths",
    "apns_tokens",
    "click_probability",
    "engagement_probability",
    "fcm_tokens",
    "ground_truth",
    "load_population",
    "simulate_feedback",
    "synthesize",
    "tz_offsets_hours",
]
