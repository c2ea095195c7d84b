"""Where an idempotent producer sends each partition's batches (:mod:`tidelog._producer_core`).

The same rule as the Rust SDK's sender: a partition's batches go to its leader, learnt from
NOT_LEADER answers (which carry the leader's address), or to a fallback broker while no leader
is known; a broker whose stream failed loses the partitions it led, and stops being the
fallback. Pure state, no I/O.
"""

from __future__ import annotations

from ._config import target


class _Routes:
    """Where each partition's batches go: its leader when known (from a NOT_LEADER hint), else
    the fallback broker, which answers NOT_LEADER with the leader if it is not the leader itself.

    ``brokers`` is the producer's list of known brokers (``host:port``, the bootstrap first),
    shared with the metadata fetches; hints naming a broker not in it are added.
    """

    __slots__ = ("brokers", "fallback", "leaders")

    def __init__(self, brokers: list[str]) -> None:
        self.brokers = brokers
        self.fallback = 0
        self.leaders: dict[tuple[str, int], str] = {}

    @property
    def clustered(self) -> bool:
        return len(self.brokers) > 1

    def fallback_broker(self) -> str:
        return self.brokers[self.fallback % len(self.brokers)]

    def target(self, tp: tuple[str, int]) -> str:
        return self.leaders.get(tp) or self.fallback_broker()

    def not_leader(self, tp: tuple[str, int], hint: str) -> str:
        """A broker said it does not lead ``tp``; ``hint`` is the leader's address ("" if it
        knows none: an election is under way, so try the next broker). Returns the address
        the hint named ("" for none)."""
        if not hint:
            self.leaders.pop(tp, None)
            self.fallback += 1
            return ""
        addr = target(hint)
        if addr not in self.brokers:
            self.brokers.append(addr)
        self.leaders[tp] = addr
        return addr

    def broker_lost(self, addr: str) -> None:
        """``addr``'s stream failed: the partitions it led look for their leader again."""
        self.leaders = {tp: a for tp, a in self.leaders.items() if a != addr}
        if self.fallback_broker() == addr:
            self.fallback += 1
