"""Answer balance: running histograms of the kept full chains, so the composer keeps the rarest answers
and values first and drops chains a text-only rule would answer (composer.py, stats.py)."""
from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING

from hopchain_jax.synth.stats import blind_guess, blind_keys

if TYPE_CHECKING:
    from hopchain_jax.synth.realize import RealizedQuery


class AnswerBalance:
    """Running histograms of kept full chains: their answers and, per kind of value step (program op,
    category, relation as stats.blind_keys names it), the values those steps produced.

    A candidate's score is (blind, spread): blind is 1 when the text-only rule of stats.py, with the
    priors seen so far, would answer it without the image (such a query is trivially easy: the paper's
    calibration drops queries a weaker model always solves, for the same reason); spread is the count
    of its answer plus the mean count of its step values. The lowest score is kept first, which
    flattens both the answers and what a blind rule could learn about each kind of value."""

    def __init__(self):
        self.answers: collections.Counter = collections.Counter()
        self.values: collections.Counter = collections.Counter()  # (kind, value) -> count
        self.kinds: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)

    @staticmethod
    def _value_keys(query: RealizedQuery) -> list[tuple]:
        said = blind_keys(query.program)
        return [(key, query.step_values[sid]) for sid, key in said.items() if isinstance(key, tuple)]

    def blind_guesses(self, query: RealizedQuery, top: int = 2) -> set:
        """The answers the text-only rule of stats.py would give if each value step took any of the
        `top` most common values of its kind seen so far (a kind seen fewer than 3 times borrows the
        values of its op and relation over all categories, so the rule is as strong early in a batch
        as over a whole dataset). A chain whose answer is among them is guessable without the image."""
        said = blind_keys(query.program)
        steps = [sid for sid, kind in said.items() if isinstance(kind, tuple)]
        choices = []
        for sid in steps:
            kind = said[sid]
            seen = self.kinds.get(kind)
            if not seen or sum(seen.values()) < 3:
                seen = self.kinds.get((kind[0], None, kind[2]))
            ranked = [v for v, _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))][:top] if seen else [1]
            choices.append(ranked)
        guesses = set()
        for values in itertools.product(*choices):
            pick = dict(zip(steps, values))
            guesses.add(blind_guess(query.program, said, pick.__getitem__))
        return guesses

    def score(self, query: RealizedQuery) -> tuple[int, float]:
        keys = self._value_keys(query)
        spread = self.answers[query.answer] + (sum(self.values[k] for k in keys) / len(keys) if keys else 0.0)
        return int(query.answer in self.blind_guesses(query, top=1)), spread

    def over_cap(self, query: RealizedQuery, max_share: float, slack: int = 3) -> bool:
        """Keeping `query` would give its answer more than `max_share` of the kept chains plus `slack`
        (the slack lets the first chains of a batch in; it weighs less as the batch grows)."""
        total = sum(self.answers.values())
        return self.answers[query.answer] + 1 > max_share * (total + 1) + slack

    def over_share(self, query: RealizedQuery, max_share: float, floor: int = 3) -> bool:
        """Keeping `query` would give its answer more than `max_share` of the kept chains once they are many:
        up to `floor` of one answer are let in while max_share of the batch is fewer, after that the share
        itself is the limit, so it holds at the end of every batch (the multi-hop composer's cap)."""
        total = sum(self.answers.values())
        return self.answers[query.answer] + 1 > max(max_share * (total + 1), floor)

    def add(self, query: RealizedQuery) -> None:
        self.answers[query.answer] += 1
        for key, value in self._value_keys(query):
            self.values[key, value] += 1
            self.kinds[key][value] += 1
            if key[1] is not None:
                self.kinds[key[0], None, key[2]][value] += 1
