"""The routing key in header values as real stacks send them: one table that every matcher is held
to (the router's `core.baggage`, the rendered Istio regexes under RE2, the OpenTelemetry SDKs).

A case is the `baggage` headers of one request (several are joined with "," in order, as Envoy
and the router do), the key the router must pick (None: no key) and whether the members conflict.
"""

from __future__ import annotations

from dataclasses import dataclass

K1 = "abc123def456"
K2 = "zzz999yyy888"  # letters above `f`: their percent-encodings have letters in either case


@dataclass(frozen=True)
class Case:
    headers: tuple[str, ...]
    key: str | None
    conflict: bool = False
    why: str = ""

    @property
    def joined(self) -> str:
        return ",".join(self.headers)


def case(header: str | tuple[str, ...], key: str | None, conflict: bool = False,
         why: str = "") -> Case:
    return Case(header if isinstance(header, tuple) else (header,), key, conflict, why)


BAGGAGE_CASES: list[Case] = [
    # one member, any position, properties, whitespace
    case(f"laneway-key={K1}", K1),
    case(f"a=1,laneway-key={K1}", K1),
    case(f"a=1, laneway-key={K1}, b=2", K1),
    case(f"a=1,\tlaneway-key = {K1} ;prop=x;flag", K1),
    case(f"laneway-key={K1};p=1,other=2", K1),
    case(f"  laneway-key  =  {K1}  ", K1),
    case(f"laneway-key={K1} , b=2", K1),
    # as OpenTelemetry-Python re-injects it (it encodes the properties with the value)
    case(f"laneway-key={K1}%3Bttl%3D60", K1, why="OTel-Python for K;ttl=60"),
    case(f"laneway-key={K1}%3bttl%3d60", K1, why="lower-case hex"),
    case(f"laneway-key={K1}+%3Bp%3D1", K1, why="OTel-Python for `K ;p=1` (space as +)"),
    case(f"laneway-key={K1}%2B%3Bp%3D1", K1, why="OTel-JS after OTel-Python"),
    case(f"laneway-key={K1}%3B", K1),
    case(f"laneway-key={K1}%3B%FF%2C;x", K1, why="anything after the cut"),
    case(f"laneway-key={K1}%3Bp;q=1,b=2", K1),
    case(f"laneway-key={K1}%20", K1),
    case(f"laneway-key=%20{K1}", K1),
    case(f"laneway-key=%09{K1}%09%20", K1),
    case(f"laneway-key={K1}+", K1),
    case(f"laneway-key=+{K1}", K1),
    # the key itself percent-encoded
    case("laneway-key=%61bc123def456", K1),
    case("laneway-key=%61%62%63%31%32%33%64%65%66%34%35%36", K1),
    case("laneway-key=%7Azz999yyy888", K2),
    case("laneway-key=%7azz999yyy888", K2),
    case("laneway-key=zzz999yyy88%38%20%3Bp", K2),
    # values that are not a key laneway made
    case("laneway-key=abc%20def", "abc def"),
    case("laneway-key=abc%2Cdef", "abc,def", why="a decoded comma is no separator"),
    case(f"laneway-key={K1}%2C", f"{K1},"),
    case(f"laneway-key={K1}%253B", f"{K1}%3B", why="decoded once"),
    case(f"laneway-key={K1}%", f"{K1}%"),
    case(f"laneway-key={K1}%3", f"{K1}%3"),
    case(f"laneway-key={K1}x", f"{K1}x", why="a different key, not a prefix match"),
    case(f"laneway-key={K1[:-1]}", K1[:-1]),
    case("laneway-key=abc", "abc"),
    case("laneway-key=abcd", "abcd"),
    case("laneway-key=%FF", "\ufffd", why="not UTF-8: replaced, still a (wrong) value"),
    # not a laneway-key member
    case(f"xlaneway-key={K1}", None),
    case(f"laneway-keys={K1}", None),
    case(f"lanewaykey={K1}", None),
    case(f"laneway={K1}", None),
    case(f"a=laneway-key={K1}", None),
    case(f"a=1;laneway-key={K1}", None, why="a property of another member"),
    case(f"laneway-key;p={K1}", None),
    case(f"LANEWAY-KEY={K1}", None, why="names are case-sensitive"),
    case("", None),
    case(" ", None),
    case("a=1,b=2", None),
    # members without a key
    case("laneway-key=", None),
    case("laneway-key= ;p", None),
    case("laneway-key=%20", None),
    case("laneway-key=+", None),
    case(f"laneway-key=%3B{K1}", None),
    case(f"laneway-key=;{K1}", None),
    # several members: the last one decides, as OpenTelemetry does
    case(f"laneway-key={K1},laneway-key={K2}", K2, True),
    case(f"laneway-key={K2},laneway-key={K1}", K1, True),
    case(f"a=1,laneway-key={K1}, b=2,laneway-key={K2};p=1", K2, True),
    case(f"laneway-key={K1},laneway-key={K2},laneway-key={K1}", K1, True),
    case(f"laneway-key={K1},laneway-key={K1}", K1),
    case(f"laneway-key={K1};a=1,laneway-key= {K1}%3Bttl%3D60", K1, why="the same key twice"),
    case(f"laneway-key={K1},laneway-key=", None, True, "an empty last member: no key"),
    case(f"laneway-key={K1},laneway-key=%20", None, True),
    case(f"laneway-key=,laneway-key={K1}", K1, True),
    case("laneway-key=,laneway-key=", None),
    case(f"laneway-key={K1},xlaneway-key={K2}", K1),
    case(f"laneway-key={K1},laneway-keyx={K2}", K1),
    case(f"laneway-key={K1},laneway-ke={K2}", K1),
    case(f"laneway-key={K1},a=1;laneway-key={K2}", K1),
    case(f"laneway-key={K1},laneway-key", K1),
    case(f"laneway-key={K1},laneway-key ;p=1", K1),
    case(f"laneway-key={K1},lane", K1),
    case(f"laneway-key={K1}, ", K1),
    case(f"laneway-key={K1},,b=2", K1),
    case(f"laneway-key={K1},\tlaneway-key\t=\t{K2}", K2, True),
    # several baggage headers: one list, in order
    case(("a=1", f"laneway-key={K1}"), K1),
    case((f"laneway-key={K1}", "b=2"), K1),
    case((f"laneway-key={K1}", f"laneway-key={K2}"), K2, True),
    case((f"laneway-key={K1}", "laneway-key="), None, True),
]

# The keys whose regexes every case is matched against: the table's own, and near misses.
REGEX_KEYS = sorted({K1, K2, K1[:-1], f"{K1}x", "abc", "abcd", "abc123", "999"})

TRACESTATE_CASES: list[Case] = [
    case(f"laneway={K1}", K1),
    case(f"congo=t61rcWkgMzE, laneway={K1}", K1),
    case(f"rojo=00f067aa0ba902b7,laneway={K1} ", K1),
    case(f"laneway = {K1} ,congo=t61", K1),
    case(f"laneway={K1}%3Bx", K1),
    case(f"laneway={K1}%20", K1),
    case(f"laneway={K1}x", f"{K1}x"),
    case(f"xlaneway={K1}", None),
    case(f"laneway-key={K1}", None),
    case(f"laneway={K1},laneway={K2}", K2),
    case(f"laneway={K1},lanewayx={K2}", K1),
    case(f"laneway={K1},laneway=", None),
    case("", None),
]
