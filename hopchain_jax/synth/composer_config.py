"""ComposerConfig: the multi-hop composer's chain shape, clarity margins and answer balance (composer.py)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ComposerConfig:
    """Chain shape, clarity margins and answer balance.

    queries_per_image: chains kept per image; candidates_per_image: distinct valid chains made per
    image to choose from (rarest answers first); max_attempts: random tries per image.
    min_instances/max_instances: distinct instances a full chain must use (SPEC: 3-6).
    p_*: probabilities of a superlative anchor, a second link hop, steering the links towards a
    `between` hop, a compare hop, a second value hop, combining. min_count/max_count: smallest/largest set count asked; max_product: largest product asked;
    max_answer_share: no answer may take more than this share of an image batch's kept chains.
    drop_blind_solvable: drop chains the text-only rule (stats.py), with the value priors of the chains
    kept so far, answers without the image: like the paper's calibration, which drops queries a weaker
    model always solves, it keeps guessable chains out of RL data. blind_top: the rule may take any of
    the blind_top most common values of each kind (2: robust to the priors of a batch differing from
    the dataset's).
    Margins only make references visually clear; execution never uses them. Pixel margins are for a
    600 px short image side and scale with it. Directions: members lie within `cone_inside_deg` of the
    stated direction, every other object of the category at least `cone_outside_deg` off it.
    side_margin_px: "the same half of the picture" needs every object it judges at least this far from
    the middle line. opt_in_forms: hop forms registered with default=False that this run composes too
    (hops/, e.g. ("count_side",)); the default data never changes when a form is added.
    """

    queries_per_image: int = 14
    candidates_per_image: int = 24
    max_attempts: int = 100
    min_instances: int = 3
    max_instances: int = 6
    p_superlative_anchor: float = 0.3
    p_two_links: float = 0.5
    p_between: float = 0.3
    p_compare: float = 0.3
    p_two_values: float = 0.95
    p_combine: float = 0.95
    min_count: int = 1
    max_count: int = 6
    max_answer_share: float = 0.07
    drop_blind_solvable: bool = True
    blind_top: int = 2
    max_product: int = 120
    relate_ratio: float = 1.25
    relate_gap_px: float = 15.0
    min_separation_px: float = 30.0
    cone_inside_deg: float = 30.0
    cone_outside_deg: float = 60.0
    superlative_position_px: float = 40.0
    superlative_area_ratio: float = 1.3
    compare_area_ratio: float = 1.6
    between_min_length_px: float = 150.0
    side_margin_px: float = 40.0
    opt_in_forms: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "opt_in_forms", tuple(self.opt_in_forms))  # a list after a JSON round trip
        for name in self.opt_in_forms:
            from hopchain_jax.synth.hops import HOP_FORMS
            if name not in HOP_FORMS:
                raise ValueError(f"ComposerConfig.opt_in_forms: unknown hop form {name!r}; registered: {sorted(HOP_FORMS)}")
            if HOP_FORMS[name].default:
                raise ValueError(f"ComposerConfig.opt_in_forms: {name!r} is composed by default already; "
                                 f"opt in only forms registered with default=False")
