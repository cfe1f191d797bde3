"""Header regexes for Istio/Envoy (RE2, matched against the whole header value; several headers
of one name are joined with `,`), following DESIGN.md's routing contract: the member in any
position, optional whitespace, properties after `;`, the key percent-encoded or not, and member
boundaries exact (`laneway-key=abcx` and `xlaneway-key=abc` do not match)."""

from __future__ import annotations

__all__ = ["baggage_regex", "tracestate_regex"]

_OWS = "[ \\t]*"


def _char(ch: str) -> str:
    """One character of the key, literal or percent-encoded (either hex case)."""
    code = f"{ord(ch):02X}"
    encodings = {f"%{code}", f"%{code.lower()}", f"%{code[0]}{code[1].lower()}",
                 f"%{code[0].lower()}{code[1]}"}
    literal = ch if ch.isalnum() else "\\" + ch
    return "(?:" + "|".join([literal, *sorted(encodings)]) + ")"


def baggage_regex(key: str) -> str:
    value = "".join(_char(c) for c in key)
    # (start or after a comma) OWS name OWS = OWS value OWS (properties) (end or next member)
    return (f"^(?:.*,)?{_OWS}laneway-key{_OWS}={_OWS}{value}{_OWS}(?:;[^,]*)?(?:,.*)?$")


def tracestate_regex(key: str) -> str:
    value = "".join(_char(c) for c in key)
    return f"^(?:.*,)?{_OWS}laneway={value}{_OWS}(?:,.*)?$"
