"""The `api` config's schema (registered by api/apps.py): what intake reads at request time.

intake_rate     per-client intake rate, DRF's syntax ("600/min"); else SVC_INTAKE_RATE
max_body_bytes  largest request body intake accepts (bytes); else SVC_MAX_BODY_BYTES
"""

import re

from configs.schemas import Field, check_fields, positive_int

# DRF's throttle rate: "<requests>/<period>", the period's first letter s, m, h or d.
_RATE = re.compile(r"[1-9][0-9]*/(s|m|h|d)[a-z]*")


def rate(value) -> str | None:
    if isinstance(value, str) and _RATE.fullmatch(value.strip()):
        return None
    return 'must be a rate such as "600/min" (per s, min, hour or day)'


API_FIELDS = {"intake_rate": Field(rate), "max_body_bytes": Field(positive_int)}


def check_api(content: dict) -> list[str]:
    return check_fields((), content, API_FIELDS)
