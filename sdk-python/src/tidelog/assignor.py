"""Client-side partition assignment, computed by the group's leader member.

The same three assignors as the Rust SDK, with the same algorithms, so a group mixing Python
and Rust members gets the same assignment whichever member leads: ``range`` (per topic,
contiguous ranges), ``roundrobin`` (all partitions dealt out in turn) and ``sticky`` (balanced,
but members keep what they owned). Members are ordered by member id. Each assignor gives
every subscribed partition to exactly one member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NAMES = ("range", "roundrobin", "sticky")


@dataclass(frozen=True)
class Member:
    member_id: str
    topics: list[str]
    #: Partitions the member owned in the previous generation.
    owned: list[tuple[str, int]] = field(default_factory=list)


def assign(
    name: str, members: Sequence[Member], partitions: Mapping[str, int]
) -> dict[str, list[tuple[str, int]]]:
    """Assigns every partition of ``partitions`` (topic → count) to one of ``members``."""
    ids = sorted(members, key=lambda m: m.member_id)
    out: dict[str, set[tuple[str, int]]] = {m.member_id: set() for m in ids}
    topics = sorted(partitions.items())
    if name == "range":
        for topic, count in topics:
            consumers = [m for m in ids if topic in m.topics]
            if not consumers:
                continue
            per, extra = divmod(count, len(consumers))
            nxt = 0
            for i, m in enumerate(consumers):
                n = per + (1 if i < extra else 0)
                out[m.member_id].update((topic, p) for p in range(nxt, nxt + n))
                nxt += n
    elif name == "roundrobin":
        turn = 0
        for topic, count in topics:
            for p in range(count):
                for _ in range(len(ids)):
                    m = ids[turn % len(ids)]
                    turn += 1
                    if topic in m.topics:
                        out[m.member_id].add((topic, p))
                        break
    elif name == "sticky":
        _sticky(ids, topics, out)
    else:
        raise ValueError(f"unknown assignor {name!r}")
    return {mid: sorted(tps) for mid, tps in out.items()}


def _sticky(ids: list[Member], topics: list[tuple[str, int]], out: dict[str, set[tuple[str, int]]]) -> None:
    exists = sorted((t, p) for t, n in topics for p in range(n))
    exists_set = set(exists)
    quota_max = -(-len(exists) // max(len(ids), 1))

    def eligible(m: Member) -> int:
        return sum(1 for t, _ in exists if t in m.topics)

    # 1. Everyone keeps what they owned (first claim wins), up to the quota.
    taken: set[tuple[str, int]] = set()
    for m in ids:
        mine = out[m.member_id]
        for key in m.owned:
            if key in exists_set and key[0] in m.topics and len(mine) < quota_max and key not in taken:
                taken.add(key)
                mine.add(key)
    # 2. The rest go, one at a time, to the eligible member with the fewest.
    for key in exists:
        if key in taken:
            continue
        candidates = [m for m in ids if key[0] in m.topics]
        if candidates:
            target = min(candidates, key=lambda m: (len(out[m.member_id]), m.member_id))
            out[target.member_id].add(key)
    # 3. Even out: move from the fullest to the emptiest while they differ by more than one.
    while True:
        loads = [(len(out[m.member_id]), m.member_id) for m in ids if eligible(m) > 0]
        if not loads:
            return
        hi, lo = max(loads), min(loads)
        if hi[0] <= lo[0] + 1:
            return
        lo_member = next(m for m in ids if m.member_id == lo[1])
        movable = [tp for tp in sorted(out[hi[1]], reverse=True) if tp[0] in lo_member.topics]
        if not movable:
            return
        out[hi[1]].remove(movable[0])
        out[lo[1]].add(movable[0])
