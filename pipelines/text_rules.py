"""What text may hold when it ends up on a user's screen, and where a deeplink may point.

Push providers and the inbox show text as given: a NUL cuts a title short in some clients,
a BEL or ESC is noise in a terminal-backed support tool, and a bidi override (U+202E) turns
"gift.exe" into something that reads differently from what it is. So content refuses:

- C0 control characters (U+0000–U+001F), DEL and the C1 controls (U+007F–U+009F), except
  tab, line feed and carriage return in the fields that are multi-line by nature (a push
  `body`, an email's `text` and `html`): a line break in a body is how a shop writes two
  lines, and every provider shows it as one;
- the bidi embedding and override characters U+202A–U+202E and the isolates U+2066–U+2069
  anywhere (ordinary right-to-left text needs none of them).

A deeplink is opened by the app: it must start with one of the schemes the deployment lists
(`HERALD_DEEPLINK_SCHEMES`, default `https` and `shop`) followed by ':', written literally
(a template's placeholders may fill what comes after, never the scheme), so `javascript:`,
`file:` or `intent:` links never reach a device.

The `*_PATTERN`s say the same in the OpenAPI document (ECMA-262 regex, `\\u` escapes), so a
client generated from it sends only what Herald accepts; the checks here give the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, Field

_BIDI = "\\u202a-\\u202e\\u2066-\\u2069"
# Characters refused in single-line text, and in multi-line text (tab, LF, CR allowed).
_SINGLE = "\\u0000-\\u001f\\u007f-\\u009f" + _BIDI
_MULTI = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f" + _BIDI
SINGLE_LINE_PATTERN = f"^[^{_SINGLE}]*$"
MULTI_LINE_PATTERN = f"^[^{_MULTI}]*$"
_REFUSED_SINGLE = re.compile(f"[{_SINGLE}]")
_REFUSED_MULTI = re.compile(f"[{_MULTI}]")
DEFAULT_DEEPLINK_SCHEMES = ("https", "shop")
SCHEME_PATTERN = re.compile(r"^[a-z][a-z0-9+.-]*$")


def text_problem(text: str, *, multiline: bool = False) -> str | None:
    """Why `text` may not be shown to a user, or None."""
    found = (_REFUSED_MULTI if multiline else _REFUSED_SINGLE).search(text)
    if found is None:
        return None
    allowed = " (tab, line feed and carriage return are allowed)" if multiline else ""
    return (
        f"must not contain control or bidi override characters: U+{ord(found.group()):04X} "
        f"at character {found.start()}{allowed}"
    )


def _single(text: str) -> str:
    if (reason := text_problem(text)) is not None:
        raise ValueError(reason)
    return text


def _multi(text: str) -> str:
    if (reason := text_problem(text, multiline=True)) is not None:
        raise ValueError(reason)
    return text


# String types for content fields: the check with its reason, the pattern in the schema.
SingleLine = Annotated[
    str, AfterValidator(_single), Field(json_schema_extra={"pattern": SINGLE_LINE_PATTERN})
]
MultiLine = Annotated[
    str, AfterValidator(_multi), Field(json_schema_extra={"pattern": MULTI_LINE_PATTERN})
]


def deeplink_pattern(schemes: Iterable[str] = DEFAULT_DEEPLINK_SCHEMES) -> str:
    """The OpenAPI pattern of a deeplink under `schemes`: a listed scheme, ':', then
    printable ASCII without spaces (what `_URL`-like checks elsewhere take)."""
    return f"^({'|'.join(re.escape(s) for s in schemes)}):[!-~]+$"


DEEPLINK_DESCRIPTION = (
    "Opened by the app: `<scheme>:` then printable ASCII without spaces. The schemes are "
    "the deployment's `HERALD_DEEPLINK_SCHEMES` (default `https` and `shop`, the rule the "
    "pattern states), written literally: never `javascript:`, `file:` and the like."
)
DEEPLINK_SCHEMA: dict[str, Any] = {"pattern": deeplink_pattern()}
# A deeplink's string type: the default rule's pattern in the schema, checked by the door
# against the deployment's schemes (`deeplink_problem`), not by pydantic.
Deeplink = Annotated[str, Field(json_schema_extra=DEEPLINK_SCHEMA)]


IMAGE_URL_PATTERN = r"^https?://[!-~]+$"
_IMAGE_URL = re.compile(IMAGE_URL_PATTERN, re.IGNORECASE)


def _image_url(url: str) -> str:
    """APNs' service extension and FCM fetch the image from the web: `http://` or
    `https://`, written out (placeholders after it), printable ASCII without spaces."""
    if not _IMAGE_URL.fullmatch(url):
        raise ValueError("must be an http:// or https:// URL (printable ASCII, no spaces)")
    return url


ImageUrl = Annotated[
    str, AfterValidator(_image_url), Field(json_schema_extra={"pattern": IMAGE_URL_PATTERN})
]


def deeplink_problem(link: str, schemes: Iterable[str]) -> str | None:
    """Why `link` may not be a deeplink under the deployment's `schemes`, or None. A
    template's link may hold placeholders after the scheme (`shop://order/{order_id}`)."""
    allowed = tuple(s.lower() for s in schemes)
    scheme, colon, rest = link.partition(":")
    if not colon or not SCHEME_PATTERN.fullmatch(scheme.lower()):
        return f"must start with a URL scheme ({', '.join(allowed)}) and ':'"
    if scheme.lower() not in allowed:
        return (
            f"scheme {scheme!r} is not allowed: deeplinks use {', '.join(allowed)} "
            "(HERALD_DEEPLINK_SCHEMES)"
        )
    if not rest or re.search(r"[^!-~]", rest):
        return "after the scheme: printable ASCII without spaces"
    return None
