"""The synthetic world's geography and clock: which countries its users live in, with what
locales, time zones and phones, and the fixed "now" a population is drawn at.

Both halves of the simulator read it — the population (`models.synth.population`) draws
countries, locales and zones from it, the hidden engagement model
(`models.synth.world`) turns each zone into a UTC offset — so it sits below both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# 2026-11-01T00:00:00Z: "now" of a synthetic population unless told otherwise; a fixed
# value, so that a seed gives the same files on every run.
REFERENCE_TIME = 1_793_491_200.0
DAY_S = 86_400.0

# country: (share %, {locale: p}, {timezone: p}, iOS share of phones). Locale regions and
# zones are the country's own (zones as listed for it in tzdata's zone.tab).
COUNTRIES: dict[str, tuple[float, dict[str, float], dict[str, float], float]] = {
    "US": (
        26.0,
        {"en-US": 0.87, "es-US": 0.13},
        {
            "America/New_York": 0.47,
            "America/Chicago": 0.29,
            "America/Denver": 0.06,
            "America/Phoenix": 0.02,
            "America/Los_Angeles": 0.15,
            "America/Anchorage": 0.005,
            "Pacific/Honolulu": 0.005,
        },
        0.57,
    ),
    "DE": (9.0, {"de-DE": 1.0}, {"Europe/Berlin": 1.0}, 0.35),
    "GB": (8.0, {"en-GB": 1.0}, {"Europe/London": 1.0}, 0.50),
    "IN": (7.0, {"en-IN": 0.55, "hi-IN": 0.45}, {"Asia/Kolkata": 1.0}, 0.05),
    "FR": (6.0, {"fr-FR": 1.0}, {"Europe/Paris": 1.0}, 0.30),
    "BR": (
        6.0,
        {"pt-BR": 1.0},
        {
            "America/Sao_Paulo": 0.85,
            "America/Fortaleza": 0.05,
            "America/Recife": 0.05,
            "America/Manaus": 0.05,
        },
        0.15,
    ),
    "JP": (5.0, {"ja-JP": 1.0}, {"Asia/Tokyo": 1.0}, 0.65),
    "ES": (
        4.0,
        {"es-ES": 0.9, "ca-ES": 0.1},
        {"Europe/Madrid": 0.95, "Atlantic/Canary": 0.05},
        0.25,
    ),
    "IT": (4.0, {"it-IT": 1.0}, {"Europe/Rome": 1.0}, 0.30),
    "CA": (
        4.0,
        {"en-CA": 0.78, "fr-CA": 0.22},
        {
            "America/Toronto": 0.60,
            "America/Vancouver": 0.15,
            "America/Edmonton": 0.12,
            "America/Winnipeg": 0.05,
            "America/Halifax": 0.05,
            "America/St_Johns": 0.03,
        },
        0.55,
    ),
    "MX": (
        4.0,
        {"es-MX": 1.0},
        {"America/Mexico_City": 0.80, "America/Monterrey": 0.12, "America/Tijuana": 0.08},
        0.20,
    ),
    "NL": (2.0, {"nl-NL": 1.0}, {"Europe/Amsterdam": 1.0}, 0.45),
    "PL": (2.0, {"pl-PL": 1.0}, {"Europe/Warsaw": 1.0}, 0.25),
    "AU": (
        2.0,
        {"en-AU": 1.0},
        {
            "Australia/Sydney": 0.38,
            "Australia/Melbourne": 0.32,
            "Australia/Brisbane": 0.15,
            "Australia/Perth": 0.10,
            "Australia/Adelaide": 0.05,
        },
        0.55,
    ),
    "KR": (2.0, {"ko-KR": 1.0}, {"Asia/Seoul": 1.0}, 0.30),
    "TR": (2.0, {"tr-TR": 1.0}, {"Europe/Istanbul": 1.0}, 0.20),
    "ID": (
        1.5,
        {"id-ID": 1.0},
        {"Asia/Jakarta": 0.70, "Asia/Makassar": 0.20, "Asia/Jayapura": 0.10},
        0.10,
    ),
    "SE": (1.0, {"sv-SE": 1.0}, {"Europe/Stockholm": 1.0}, 0.50),
    "CH": (1.0, {"de-CH": 0.63, "fr-CH": 0.27, "it-CH": 0.10}, {"Europe/Zurich": 1.0}, 0.55),
    "AT": (1.0, {"de-AT": 1.0}, {"Europe/Vienna": 1.0}, 0.40),
    "BE": (1.0, {"nl-BE": 0.58, "fr-BE": 0.42}, {"Europe/Brussels": 1.0}, 0.40),
    "AR": (1.0, {"es-AR": 1.0}, {"America/Argentina/Buenos_Aires": 1.0}, 0.10),
    "IE": (0.5, {"en-IE": 1.0}, {"Europe/Dublin": 1.0}, 0.50),
    "PT": (0.5, {"pt-PT": 1.0}, {"Europe/Lisbon": 0.95, "Atlantic/Azores": 0.05}, 0.25),
}


def tz_offsets_hours(at: float = REFERENCE_TIME) -> dict[str, float]:
    """UTC offset in hours of every synthetic time zone at `at` (epoch seconds)."""
    when = datetime.fromtimestamp(at, UTC)
    zones = sorted({tz for *_, tzs, _ in COUNTRIES.values() for tz in tzs})
    return {tz: ZoneInfo(tz).utcoffset(when).total_seconds() / 3600 for tz in zones}
