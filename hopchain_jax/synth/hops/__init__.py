"""Hop forms as a registry: one module per form, each registering a HopForm (base.py says what one
holds). Import order is registration order: anchors, links, compare, value reads, set counts, opt-in forms.

To add a form: write a module like count_side.py (its op must exist in program.py), import it below."""
from hopchain_jax.synth.hops.base import (HOP_FORMS, ROLES, HopForm, HopSpec, form, forms, outline,  # noqa: F401
                                          register_form, templates, there_are)
from hopchain_jax.synth.hops import select, superlative  # noqa: F401,E402  anchors
from hopchain_jax.synth.hops import relate, same_color, between  # noqa: F401,E402  links
from hopchain_jax.synth.hops import compare  # noqa: F401,E402
from hopchain_jax.synth.hops import count_parts, read_number, count_letters  # noqa: F401,E402  reads
from hopchain_jax.synth.hops import count_relative, count_same_color  # noqa: F401,E402  set counts
from hopchain_jax.synth.hops import count_side  # noqa: F401,E402  opt-in
