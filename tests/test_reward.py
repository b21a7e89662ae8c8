"""Verifiable rewards (extract_answer / parse_number / is_equivalent / reward) and SAPO group advantages.

Table-driven unit tests for every rule, adversarial robustness checks (huge/deep/garbage inputs, bounded
time), and property-based fuzzing with hypothesis against an independent oracle (>20,000 generated
examples in total, plus 20,000 seeded random adversarial strings), including the box-tail rule (the
last box counts only when a short harmless tail follows it: the ``\\boxed{1}4}4}4}...`` reward hack).
"""
import random
import re
import time
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hopchain_jax.rl import reward as R
from hopchain_jax.rl.reward import extract_answer, group_advantages, is_equivalent, parse_number, reward

F = Fraction
FUZZ = dict(deadline=None, database=None, derandomize=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                   HealthCheck.data_too_large])

# ------------------------------------------------------------------------------------ parse_number

PARSE_CASES = [
    # integers, signs
    ("7", F(7)), ("0", F(0)), ("-0", F(0)), ("007", F(7)), ("+5", F(5)), ("-5", F(-5)),
    ("\u22125", F(-5)), ("\u2212 5", None), ("- 5", None), ("--5", None), ("+-5", None),
    # decimals
    (".5", F(1, 2)), ("5.", F(5)), ("-0.25", F(-1, 4)), ("7.0", F(7)), ("7.50", F(15, 2)), ("0.1", F(1, 10)),
    ("1.2.3", None),
    # fractions
    ("3/4", F(3, 4)), ("3 / 4", F(3, 4)), ("-3/4", F(-3, 4)), ("3/-4", F(-3, 4)), ("1/0", None),
    ("1/2/3", None), ("3/", None), ("/4", None), ("3//4", None),
    (r"\frac{3}{4}", F(3, 4)), (r"\dfrac{3}{4}", F(3, 4)), (r"\tfrac{3}{4}", F(3, 4)),
    (r"\frac{ 3 }{ 4 }", F(3, 4)), (r"-\frac{3}{4}", F(-3, 4)), (r"\frac{-3}{4}", F(-3, 4)),
    (r"\frac{1.5}{3}", F(1, 2)), (r"\frac34", None), (r"\frac{x}{4}", None), (r"\frac{3}{0}", None),
    (r"1\frac{1}{2}", None), ("1 1/2", None), (r"\frac{1}{2}\frac{1}{2}", None),
    # thousands separators
    ("1,234", F(1234)), ("1,234,567.5", F(2469135, 2)), ("-1,234", F(-1234)), ("12,345,678", F(12345678)),
    ("1,23", None), ("1,2345", None), ("123,45", None), ("0,500", None), ("12,34,567", None),
    ("1.234,5", None), ("3,5", None), ("1, 234", None), ("1 234", None), ("(3,4)", None),
    ("1{,}234", F(1234)), (r"1\,234", F(1234)), ("1\u2009234", F(1234)), ("1{,}5", None),
    ("1,234.", F(1234)), ("1,234,", F(1234)),
    # scientific notation
    ("1e3", F(1000)), ("2.5E-2", F(1, 40)), ("1E+10", F(10**10)), ("-1.5e2", F(-150)), ("1e3.5", None),
    ("2e", None), ("1e99999999", None), ("1e1001", None),
    # LaTeX wrappers
    ("$7$", F(7)), (r"\text{7}", F(7)), (r"\textbf{7}", F(7)), (r"\mathbf{7}", F(7)), (r"\boxed{7}", F(7)),
    (r"\left( 7 \right)", F(7)), (r"\(7\)", F(7)), (r"\[7\]", F(7)), (r"7 \text{ apples}", F(7)),
    (r"7\,\text{cm}", F(7)), (r"5\%", F(5)), (r"\$5", F(5)), (r"90^\circ", F(90)), (r"90^{\circ}", F(90)),
    ("90°", F(90)), (r"{7}", F(7)), (r"\displaystyle 7", F(7)), ("5~\\text{cm}", F(5)),
    # units / words
    ("12 dots", F(12)), ("$5", F(5)), ("5 %", F(5)), ("5%", F(5)), ("7 ladybugs.", F(7)), ("It is 7.", F(7)),
    ("x = 7", F(7)), ("n=7", F(7)), ("5cm", F(5)), ("5 km/h", F(5)), ("3rd", F(3)), ("**7**", F(7)),
    ("**7** apples", F(7)), ("7 times", F(7)), ("12 cm^2", F(12)), ("12 cm²", F(12)), ("7 m^2", F(7)),
    (r"12\,\text{cm}^{2}", F(12)), ("12 square units", F(12)), ("7 dots above the line", F(7)),
    ("the one on the left has 7", F(7)), ("the most common count is 7", F(7)), ("is equal to 7", F(7)),
    (r"1\!,\!234", F(1234)), ("I think 7 I guess", F(7)), ("答案是7", F(7)),
    # ambiguous: never guess
    ("3 or 4", None), ("between 2 and 5", None), ("2-3", None), ("2 - 3", None), ("2\u20133", None),
    ("\u20135", None), ("7 = 7", None), ("3+4=7", None), ("3, 4", None), ("10:30", None), ("3:4", None),
    ("7 (seven)", None), ("not 7", None), ("isn't 7", None), ("about 7", None), ("~7", None),
    ("at least 7", None), ("7 or more", None), ("more than 7", None), ("7 million", None),
    ("7 and a half", None), ("negative 5", None), ("minus 5", None), ("7 hundred", None), ("over 7", None),
    ("at most 7", None), ("up to 7", None), ("approximately 7", None), ("square of 4", None),
    (r"7\boxed{/2}", None), ("3/{4}", None), (r"1/\boxed{2", None), ("7}", None), ("{7", None),
    # operators, symbols, variables
    ("7!", None), ("7^2", None), ("7²", None), ("2x", None), ("x2", None), ("3i", None), ("5k", None),
    ("x+7", None), ("x + 7", None), ("x-5", None), ("x -5", None), ("7*x", None), ("7 * 3", None),
    ("|-5|", None), ("<7", None), ("7 ± 1", None), ("2π", None), (r"2\pi", None), (r"\sqrt{2}", None),
    (r"5\sqrt{2}", None), (r"3 \times 4", None), (r"\approx 7", None), ("0x1F", None), ("H2O", None),
    ("x^2 = 7", None), ("m^2 = 7", None), ("7 x^2", None), ("7 cm^4", None), ("5 x", None), ("5 i", None),
    ("974 k", None), (r"5\!i", None), (r"5\,i", None), ("7 π", None), ("3.14159...", None), ("7...", None),
    ("\u04452", None),
    ("7(2)", None), ("7-year-old", None), (r"7\ldots", None), ("7…", None), ("x_1", None),
    # non-ASCII digits
    ("½", None), ("٣", None), ("三", None), ("７", None), ("Ⅻ", None),
    # nothing numeric
    ("", None), ("nan", None), ("NaN", None), ("inf", None), ("-inf", None), ("Infinity", None),
    ("abc", None), (".", None), ("-", None), (",", None), ("/", None), ("e5", None),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES, ids=[repr(c[0]) for c in PARSE_CASES])
def test_parse_number_table(text, expected):
    got = parse_number(text)
    assert got == expected and (got is None) == (expected is None)
    assert got is None or isinstance(got, Fraction)


def test_parse_number_non_str_and_limits():
    assert parse_number(None) is None and parse_number(7) is None and parse_number(b"7") is None
    assert parse_number("9" * R.MAX_DIGITS) == F(10**R.MAX_DIGITS - 1)
    assert parse_number("9" * (R.MAX_DIGITS + 1)) is None
    assert parse_number("1" * 10**6) is None               # > 4300 digits: never a ValueError
    assert parse_number("1e1000") == F(10**1000)
    assert parse_number("7 " + " " * (R.MAX_SPAN_CHARS + 1)) is None


# ---------------------------------------------------------------------------------- extract_answer

EXTRACT_CASES = [
    (r"so \boxed{7}.", "7"),
    (r"\boxed{3} then later \boxed{4}", "4"),                       # last box wins
    (r"\boxed{7} and then 8 9 10", None),                          # boxed, then kept writing: no answer
    (r"Answer: 5. Final: \boxed{7}", "7"),                         # box beats phrases
    (r"\fbox{12}", "12"),
    (r"\boxed {7}", "7"),
    (r"\boxed{\frac{3}{4}}", r"\frac{3}{4}"),                     # nested braces
    (r"\boxed{ {1}{2} }", "{1}{2}"),
    (r"\boxed{5} and \boxed{6", None),                             # unterminated: not the answer, but its
                                                                    # backslash makes box 5's tail harmful
    (r"\boxed{6 \boxed{5}", "5"),
    (r"\boxed{\{3\}}", r"\{3\}"),                                   # escaped braces are not groups
    (r"\boxed{}", None),
    (r"\boxed{} 7", None),                                          # found-but-empty box: no fallback
    (r"\boxed{}.", None),
    ("The answer is 7.", "7."),
    ("Answer: 42 apples\nsome other line 99", "42 apples"),
    ("answer: 3\nANSWER: 4", "4"),                                 # last phrase wins, case-insensitive
    ("The final answer is $12$. I hope it is correct.", "$12$. I hope it is correct."),
    ("Final Answer:\n\n  9  \n", "9"),
    ("**Final Answer**\n7", "7"),
    ("Answer:", None),
    ("I counted 3 red and 4 blue, so 7 total.", "so 7 total."),
    ("We get 2 - 3", "get 2 - 3"),                                  # operator pulls in the left number
    ("so 722- 88 /88", "so 722- 88 /88"),                           # chunks tied by operators, then context
    ("0-} 0/ 1", "0-} 0/ 1"),                                       # context beyond a fraction's numerator
    ("x = 7", "= 7"),                                               # "=" does not pull in its left side
    ("it is 7 apples -", "is 7 apples -"),                         # a dangling operator is kept
    ("the result is not 7", "not 7"),
    (r"hence \frac{ 3 }{ 4 } overall", r"hence \frac{ 3 }{ 4 } overall"),
    ("no numbers here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES, ids=[repr(c[0])[:40] for c in EXTRACT_CASES])
def test_extract_answer_table(text, expected):
    assert extract_answer(text) == expected


def test_extract_fallback_window():
    far = "Answer: 5\n" + "x " * 5000                              # phrase outside the window
    assert extract_answer(far) is None
    assert extract_answer("Answer: 5\n" + "y " * 5000 + "so 8") == "so 8"
    # the whole text is still searched for the last box ...
    assert extract_answer("z 9 " * 10**5 + r"\boxed{5}.") == "5"
    # ... but a box far from the end has a tail over MAX_BOX_TAIL_CHARS: no answer, and no fallback
    assert extract_answer(r"\boxed{5}" + "z " * 10**5 + "9") is None
    # a number cut by the window is never read
    assert extract_answer("123456" + "a" * (R.FALLBACK_WINDOW - 3)) is None
    assert extract_answer("12345 " + "b " * (R.FALLBACK_WINDOW // 2 - 1)) is None


# ------------------------------------------------------- box tail: the last box must end the response

BOX_TAIL_CASES = [
    # the reward hack seen in RL: no EOS, "4}" repeated up to the length cap
    (r"\boxed{1}4}4}4}", None),
    (r"\boxed{1}" + "4}" * 500, None),
    (r"\boxed{1}4", None),
    (r"\boxed{1}}", None),                                          # a stray brace alone is harmful
    # kept writing after the box: no answer, and the fallbacks are NOT tried
    (r"\boxed{7} and then 8", None),
    ("\\boxed{7}\n\n\\boxed{8", None),                              # unterminated 2nd box (cut by the cap)
    (r"\boxed{7}\boxed{", None),
    (r"\boxed{7} \fbox", None),                                     # a backslash: a further box opener
    ("\\boxed{7}\n\nAnswer: 7", None),                              # a digit, even the same number
    (r"\boxed{7} so 7", None),
    (r"\boxed{7} \text{ apples}", None),                            # braces and a backslash
    (r"\boxed{7}\}", None), (r"\boxed{7}\{", None),                # escaped braces count too
    (r"\boxed{7}\\", None), (r"\boxed{7}\\)", None),               # "\\" is not the closer "\)"
    (r"\boxed{7}\,", None), (r"\boxed{7}\quad", None),
    (r"\boxed{12} cm²", None), (r"\boxed{7} ½", None), (r"\boxed{7} ٣", None), (r"\boxed{7} 三", None),
    (r"\boxed{7}" + " and so on" * 30, None),                       # digit-free, but over the cap
    (r"\boxed{7}" + "\n" * 201, None),
    # harmless tails: whitespace, punctuation, math delimiters, a short digit-free sentence, end markers
    (r"\boxed{7}", "7"),
    (r"\boxed{7}.", "7"),
    (r"\boxed{7}$.", "7"),
    (r"$\boxed{7}$.", "7"),
    (r"**\boxed{7}**", "7"),
    (r"**\boxed{7}**.", "7"),
    ("\\boxed{7}\nI hope this helps!", "7"),
    (r"\boxed{7}. I hope this helps!", "7"),
    (r"$\boxed{7}$ </s>", "7"),                                     # an end marker left in the text
    (r"$\boxed{7}$<|im_end|>", "7"),
    (r"\(\boxed{7}\)", "7"), (r"\(\boxed{7}\).", "7"),              # math-mode closers are allowed
    ("\\[\n\\boxed{7}\n\\]", "7"), (r"$$\boxed{7}$$", "7"),
    ("\\boxed{7}  \n\t ", "7"),
    (r"\boxed{7} (the number of red cubes).", "7"),
    (r"\fbox{7} :)", "7"),
    (r"\boxed{3} then \boxed{4}.", "4"),                            # only the tail after the LAST box counts
    (r"\boxed{6 \boxed{5}!", "5"),
    (r"\boxed{7}" + " " * 200, "7"),                                # exactly MAX_BOX_TAIL_CHARS
    (r"\boxed{7}" + " " * 201, None),
]


@pytest.mark.parametrize("text,expected", BOX_TAIL_CASES, ids=[repr(c[0])[:40] for c in BOX_TAIL_CASES])
def test_extract_box_tail_table(text, expected):
    assert extract_answer(text) == expected
    assert is_equivalent(text, 7) is (expected in ("7",))


def test_box_tail_constant_and_hack_reward():
    assert R.MAX_BOX_TAIL_CHARS == 200 and "MAX_BOX_TAIL_CHARS" in R.__all__
    ok = "." + "a" * (R.MAX_BOX_TAIL_CHARS - 1)
    assert extract_answer(r"\boxed{7}" + ok) == "7"
    assert extract_answer(r"\boxed{7}" + ok + "a") is None
    for n in (1, 3, 200, 4000):
        hack = r"\boxed{1}" + "4}" * n
        for gold in (1, 14, 4, 1444, "1"):
            assert reward(hack, gold) == 0.0, (n, gold)
    # the same text without a box still uses the fallbacks (unchanged)
    assert extract_answer("The answer is 7.") == "7." and extract_answer("so 7 total") == "so 7 total"
    assert extract_answer("boxed{7} 8") == "boxed{7} 8"                 # no backslash: not a box


# ---------------------------------------------------------------------------------- is_equivalent

EQUIV_CASES = [
    (r"\boxed{7}", 7, True), (r"\boxed{7.0}", 7, True), (r"\boxed{7.5}", 7, False), (r"\boxed{7}", 7.0, True),
    (r"\boxed{7}", "7", True), (r"\boxed{7}", Decimal("7.000"), True), (r"\boxed{7}", F(7), True),
    (r"\boxed{3/4}", 0.75, True), (r"\boxed{\frac{3}{4}}", Decimal("0.75"), True), ("Answer: 0.75", F(3, 4), True),
    (r"\boxed{0.1}", 0.1, True), (r"\boxed{0.1}", 0.30000000000000004 - 0.2, False),
    (r"\boxed{0.3}", 0.1 + 0.2, False),                                 # 0.30000000000000004 exactly
    (r"\boxed{1,234}", 1234, True), (r"\boxed{1,23}", 123, False), (r"\boxed{1,23}", 1.23, False),
    (r"\boxed{-5}", -5, True), (r"\boxed{-5}", 5, False), (r"\boxed{−5}", -5, True),
    (r"\boxed{3} ... \boxed{4}", 3, False), (r"\boxed{3} ... \boxed{4}", 4, True),
    (r"\boxed{4} and later I say 3", 3, False), (r"\boxed{4} and later I say 3", 4, False), ("The answer is 2-3", 3, False), ("The answer is 2-3", -3, False),
    ("3 or 4", 4, False), ("It is 7.", 7, True), ("7 ladybugs.", 7, True), (r"\boxed{1e3}", 1000, True),
    (r"\boxed{2.5E-2}", "0.025", True), (r"\boxed{12 \text{ dots}}", 12, True), (r"\boxed{x = 7}", 7, True),
    ("", 0, False), ("nan", 0, False), (r"\boxed{}", 0, False), (r"\boxed{7}", np.float64(7), True),
    (r"\boxed{0.1}", np.float32(0.1), True), (r"\boxed{7}", np.int64(7), True), (r"\boxed{7}", np.array(7.0), True),
    (r"\boxed{1}4}4}4}", 1, False), (r"\boxed{7}.", 7, True), (r"\(\boxed{7}\)", 7, True),
]


@pytest.mark.parametrize("text,answer,expected", EQUIV_CASES, ids=[f"{c[0][:30]!r}-{c[1]!r}" for c in EQUIV_CASES])
def test_is_equivalent_table(text, answer, expected):
    assert is_equivalent(text, answer) is expected
    assert reward(text, answer) == (1.0 if expected else 0.0)
    assert isinstance(reward(text, answer), float)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "seven", "3 or 4", None, [7], True,
                                 Decimal("NaN"), np.array([1, 2])])
def test_invalid_gold_answer_raises(bad):
    with pytest.raises((TypeError, ValueError)):
        is_equivalent(r"\boxed{7}", bad)


def test_non_str_response_is_false():
    for resp in (None, 7, b"\\boxed{7}", ["7"]):
        assert is_equivalent(resp, 7) is False and reward(resp, 7) == 0.0


# ------------------------------------------------------------------ robustness: size, depth, garbage

def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


HUGE = [
    "1" * 10**6,
    r"\boxed{" + "9" * 10**6 + "}",
    "Answer: " + "9" * 10**6,
    "{" * 10**6 + r"\boxed{7}" + "}" * 10**6,
    r"\boxed{" * 200_000 + "7",
    r"\boxed{" * 100_000 + "7" + "}" * 100_000,
    "Answer: " * 100_000,
    "final answer " * 100_000 + "is 7",
    "1," * 500_000,
    "-" * 10**6 + "5",
    " " * 10**6 + "7",
    "\t\n\r\x00\x07\x1b" * 100_000 + " so 7",
    "\ud800\udfff\udc00" * 100_000 + r"\boxed{7}",
    r"\frac{" * 100_000 + "1}{2}" * 100_000,
    "a" * 10**6,
    "\\" * 10**6,
    "1e" * 300_000 + "5",
    "9" * 4301,
    r"\boxed{" + "9" * 4301 + "}",
    r"\boxed{7}" + "4}" * 500_000,                     # the reward hack, at a huge length cap
    r"\boxed{7}" + " " * 10**6,                        # harmless characters, but far too many
    r"\boxed{7}" + "\\" * 10**6,
    r"\boxed{7}" + r"\boxed{" * 200_000,
]


@pytest.mark.parametrize("idx", range(len(HUGE)))
def test_huge_and_garbage_inputs_are_bounded(idx):
    text = HUGE[idx]
    span, t1 = _timed(R._extract_answer, text)         # the raw implementation must not raise either
    val, t2 = _timed(R._parse_number, span)
    eq, t3 = _timed(is_equivalent, text, 7)
    assert t1 + t2 + t3 < 5.0
    assert isinstance(eq, bool)
    expect_seven = idx in (7, 10, 11, 12)             # 3: the box is followed by a million "}": harmful tail
    assert eq is expect_seven, (idx, span[:60] if span else span, val)


def test_deep_nesting_does_not_recurse():
    text = r"\boxed{" + "{" * 300_000 + "7" + "}" * 300_000 + "}"
    assert extract_answer(text).strip("{}") == "7"
    assert not is_equivalent(text, 7)                       # span over MAX_SPAN_CHARS: refused
    text = r"\boxed{" + "{" * 500 + "7" + "}" * 500 + "}"
    assert is_equivalent(text, 7)


# ---------------------------------------------------------------------------------- group_advantages

def test_group_advantages_basic():
    r = np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    adv, zero = group_advantages(r)
    assert adv.shape == (4, 4) and adv.dtype == np.float32
    assert zero.shape == (4,) and zero.dtype == np.bool_
    assert zero.tolist() == [False, True, True, False]
    assert np.all(adv[1] == 0.0) and np.all(adv[2] == 0.0)
    np.testing.assert_allclose(adv[0], [1, -1, 1, -1], atol=1e-5)
    s = np.sqrt(3) / 4 * 4 / np.sqrt(3)                       # population std of [1,0,0,0] = sqrt(3)/4
    np.testing.assert_allclose(adv[3], [3 / np.sqrt(3), -1 / np.sqrt(3), -1 / np.sqrt(3), -1 / np.sqrt(3)],
                               rtol=1e-4 * s)
    for row in (0, 3):
        assert abs(float(adv[row].mean())) < 1e-6
        assert abs(float(adv[row].std()) - 1.0) < 1e-4


def test_group_advantages_formula_and_eps():
    rng = np.random.default_rng(0)
    r = rng.random((16, 8))
    r[3] = 0.25
    adv, zero = group_advantages(r, eps=1e-3)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-3)
    want[3] = 0
    np.testing.assert_allclose(adv, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert zero.tolist() == [i == 3 for i in range(16)]


@settings(max_examples=300, **FUZZ)
@given(st.integers(1, 6), st.integers(1, 9), st.data())
def test_group_advantages_property(n, g, data):
    r = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=g, max_size=g),
                                    min_size=n, max_size=n)))
    adv, zero = group_advantages(r)
    assert adv.shape == (n, g) and zero.shape == (n,)
    for i in range(n):
        if np.all(r[i] == r[i, 0]):
            assert zero[i] and np.all(adv[i] == 0.0)
        else:
            assert not zero[i]
            assert abs(float(adv[i].mean())) < 1e-5
            assert abs(float(adv[i].std()) - 1.0) < 1e-3
            assert np.all((adv[i] > 0) == (r[i] > r[i].mean()))


def test_group_advantages_edge_shapes_and_errors():
    adv, zero = group_advantages(np.zeros((0, 4)))
    assert adv.shape == (0, 4) and zero.shape == (0,)
    adv, zero = group_advantages(np.ones((3, 1)))
    assert np.all(adv == 0) and zero.all()
    adv, zero = group_advantages(np.zeros((2, 0)))
    assert adv.shape == (2, 0) and zero.all()
    with pytest.raises(ValueError):
        group_advantages(np.zeros(4))
    with pytest.raises(ValueError):
        group_advantages(np.array([[0.0, np.nan]]))


# -------------------------------------------------------------------------------- fuzz 1: never raise

ANY_CHAR = st.characters(exclude_categories=())                    # includes lone surrogates
LATEXY = st.sampled_from(list("0123456789-+.,/{}\\$ ^%") + [r"\boxed{", r"\frac{", "Answer:", "answer is",
                                                             "\n", "e", "x", r"\,", "{,}", "−", "½"])


@settings(max_examples=6000, **FUZZ)
@given(st.one_of(st.text(ANY_CHAR, max_size=120), st.text(max_size=60), st.lists(LATEXY, max_size=30).map("".join)))
def test_fuzz_never_raises(text):
    span = R._extract_answer(text)                        # raw implementations: no hidden exceptions
    assert span is None or (isinstance(span, str) and span)
    R._parse_number(text)
    value = R._parse_number(span) if span is not None else None
    assert value is None or isinstance(value, Fraction)
    assert extract_answer(text) == span and parse_number(text) == R._parse_number(text)
    eq = is_equivalent(text, 7)
    assert eq is (value == 7)
    assert reward(text, "0.5") in (0.0, 1.0)


# --------------------------------------------------------------- fuzz 2: boxed numbers in digit-free filler

FILLER = st.text(st.characters(exclude_categories=("Nd", "No", "Nl"), exclude_characters="\\"), max_size=20)
# what may follow the last box: FILLER without braces or numeric characters ("三" is a letter but numeric)
TAIL_FILLER = st.text(st.characters(exclude_categories=("Nd", "No", "Nl"), exclude_characters="\\{}"),
                      max_size=20).map(lambda t: "".join(c for c in t if not c.isnumeric()))


def _int_forms(n: int) -> list[str]:
    s = str(n)
    forms = [s, f"{n:,}", f"{n}.0", f"{n}.", f"${n}$", f"\\text{{{n}}}", f"{n} \\text{{ apples}}", f"{n}e0",
             f"\\mathbf{{{n}}}", f"\\left( {n} \\right)", f"{n}0e-1", f"{n} dots", f"{n}\\%"]
    if n >= 0:
        forms.append(f"+{n}")
    else:
        forms.append("\u2212" + s[1:])
    if abs(n) >= 1000:
        forms += [f"{n:,}".replace(",", "{,}"), f"{n:,}".replace(",", "\\,")]
    return forms


def _dec_forms(d: Decimal) -> list[str]:
    fixed = format(d, "f")
    value = F(d)
    forms = [fixed, format(d, ",f"), format(d, "e"), f"${fixed}$", f"{fixed} \\text{{cm}}",
             f"\\frac{{{value.numerator}}}{{{value.denominator}}}", f"{value.numerator}/{value.denominator}"]
    if "." in fixed:
        stripped = fixed.rstrip("0")
        forms.append(stripped)
        if fixed.startswith("0."):
            forms.append(fixed[1:])
        if fixed.startswith("-0."):
            forms.append("-" + fixed[2:])
    return forms


def _boxed_number(kind, n, places, pick_form, pick_gold):
    """(value, textual form, gold answer of some accepted type) for an int (kind 0) or a decimal."""
    if kind == 0:
        value, forms = F(n), _int_forms(n)
        golds = [n, str(n), F(n), Decimal(n)] + ([float(n)] if abs(n) < 2**53 else [])
    else:
        d = Decimal(n % 10**17 * (1 if n >= 0 else -1)).scaleb(-places)
        value, forms = F(d), _dec_forms(d)
        golds = [d, format(d, "f"), F(d)] + ([float(d)] if Decimal(repr(float(d))) == d else [])
    return value, forms[pick_form % len(forms)], golds[pick_gold % len(golds)]


@settings(max_examples=6000, **FUZZ)
@given(st.integers(0, 2**16 - 1), st.one_of(st.integers(-10**6, 10**6), st.integers(-10**40, 10**40)), FILLER,
       TAIL_FILLER, st.integers(-10**12, 10**12))
def test_fuzz_boxed_number_in_filler(code, n, filler, tail, other):
    kind, places, pick_form, pick_gold = code & 1, 1 + (code >> 1) % 8, (code >> 4) % 64, code >> 10
    value, form, gold = _boxed_number(kind, n, places, pick_form, pick_gold)
    text = filler + "\\boxed{" + form + "}" + tail
    assert is_equivalent(text, gold), (text, gold)
    assert reward(text, gold) == 1.0
    wrong = {value + 1, value - 1, value * 10, value / 10, value + F(1, 10**9), -value, F(other),
             value * 1000, value + F(1, 2)}
    wrong.discard(value)
    for m in wrong:
        assert not is_equivalent(text, m), (text, m)
    assert not is_equivalent(text, str(value.numerator + 1)) or value == value.numerator + 1


# --------------------------------------------------------------- fuzz 2b: what follows the last box

def _oracle_tail_ok(tail):
    """Independent reading of the box-tail rule: short, no numeric char, no brace, backslash only in
    the closers "\\)" and "\\]"."""
    if len(tail) > 200:
        return False
    for k, c in enumerate(tail):
        if c.isnumeric() or c in "{}":
            return False
        if c == "\\" and tail[k + 1:k + 2] not in (")", "]"):
            return False
    return True


PUNCT_TAIL = st.lists(st.one_of(
    st.characters(categories=("Zs", "Zl", "Zp", "Po", "Ps", "Pe", "Pd", "Pi", "Pf", "Pc"), exclude_characters="\\{}"),
    st.sampled_from(["\n", "\t", "\r", "$", "**", "*", "<", ">", "|", "\\)", "\\]", "</s>", "<|im_end|>"])),
    max_size=40).map("".join).filter(lambda t: len(t) <= 200)
NUMERIC_CHARS = st.sampled_from(list("0123456789") + ["²", "½", "٣", "三", "७", "①", "Ⅻ", "７"])


@settings(max_examples=2000, **FUZZ)
@given(st.integers(0, 2**16 - 1), st.integers(-10**9, 10**9), FILLER, PUNCT_TAIL, st.text(max_size=20))
def test_fuzz_box_then_punctuation_tail_is_rewarded(code, n, filler, tail, sentence):
    kind, places, pick_form, pick_gold = code & 1, 1 + (code >> 1) % 8, (code >> 4) % 64, code >> 10
    value, form, gold = _boxed_number(kind, n, places, pick_form, pick_gold)
    text = filler + "\\boxed{" + form + "}" + tail
    assert reward(text, gold) == 1.0, (text, gold)
    assert reward(text, value + 1) == 0.0
    prose = " " + "".join(c for c in sentence if c.isalpha() and not c.isnumeric()) + "."
    assert reward(text + prose, gold) == (1.0 if len(tail + prose) <= R.MAX_BOX_TAIL_CHARS else 0.0)


@settings(max_examples=2000, **FUZZ)
@given(st.integers(0, 2**16 - 1), st.integers(-10**9, 10**9), FILLER, st.text(max_size=30), NUMERIC_CHARS,
       st.text(max_size=30))
def test_fuzz_box_then_numeric_tail_is_not_rewarded(code, n, filler, before, digit, after):
    kind, places, pick_form, pick_gold = code & 1, 1 + (code >> 1) % 8, (code >> 4) % 64, code >> 10
    value, form, gold = _boxed_number(kind, n, places, pick_form, pick_gold)
    text = filler + "\\boxed{" + form + "}" + before + digit + after
    if "box" in before + after:
        return                                       # a second box could be the last one: another test
    assert extract_answer(text) is None, text      # no fallback either: never the number in the tail
    assert reward(text, gold) == 0.0, (text, gold)
    assert reward(text + "\\boxed{" + form + "}", gold) == 1.0   # boxing it again at the end is fine


@settings(max_examples=3000, **FUZZ)
@given(st.integers(-10**6, 10**6), FILLER,
       st.one_of(st.text(max_size=40), st.text(ANY_CHAR, max_size=40), st.lists(LATEXY, max_size=12).map("".join),
                 st.text(st.sampled_from(" .!a{}\\)]$*\n4"), max_size=220)))
def test_fuzz_box_tail_matches_oracle(n, filler, tail):
    text = filler + "\\boxed{" + str(n) + "}" + tail
    if "box" in tail:
        return
    assert is_equivalent(text, n) is _oracle_tail_ok(tail), (text, _oracle_tail_ok(tail))


# ----------------------------------------------------- fuzz 3: adversarial strings vs an independent oracle

PIECES = (list("0123456789") * 3 + [",", ",", ".", ".", "-", "-", "/", "{", "}", "\\", " ", " ", " ", "\n"]
          + ["boxed", "frac", "Answer:", "\\boxed{", "\\frac{", "}{", "a", "b", "x", "e", "k", "m", "is",
             "or", "1,234", "\\,", "{,}", "0.", ".5", "1e3"])
_ORACLE_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}", re.ASCII)
_ORACLE_NUM = r"[0-9.,]*[0-9][0-9.,]*(?:[eE][-+]?[0-9]+)?"
_ORACLE_ATOM = re.compile(rf"-*{_ORACLE_NUM}(?:\s*[-/]\s*-*{_ORACLE_NUM})*", re.ASCII)


def _oracle_boxed(s):
    """Naive quadratic scan: (content, closing-brace index) of the balanced box whose closing brace is last."""
    best_end, best = -1, None
    starts = [(i, kw) for kw in ("\\boxed", "\\fbox") for i in range(len(s)) if s.startswith(kw, i)]
    for i, kw in starts:
        j = i + len(kw)
        while j < len(s) and s[j].isspace():
            j += 1
        if j >= len(s) or s[j] != "{":
            continue
        depth, k = 1, j + 1
        while k < len(s):
            if s[k] == "\\" and k + 1 < len(s) and s[k + 1] in "{}":
                k += 2
                continue
            if s[k] == "{":
                depth += 1
            elif s[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        if depth == 0 and k > best_end:
            best_end, best = k, s[j + 1:k]
    return None if best is None else (best, best_end)


def _oracle_phrase(s):
    low = s.lower()
    pos = -1
    i = low.find("answer")
    while i >= 0:
        if i == 0 or not (low[i - 1].isalnum() or low[i - 1] == "_"):
            j = i + 6
            while j < len(low) and low[j].isspace():
                j += 1
            if j < len(low) and low[j] == ":":
                pos = j + 1
        i = low.find("answer", i + 1)
    if pos < 0:
        return None
    lines = s[pos:].split("\n")
    if any(c.isalnum() for c in lines[0]) or len(lines) == 1:
        return lines[0]
    return next((ln for ln in lines[1:] if any(c.isalnum() for c in ln)), "")


def _oracle_normalise(s):
    def frac(m):
        pad = "" if m.start() > 0 and s[m.start() - 1] == "-" else " "
        return f"{pad}{m.group(1)}/{m.group(2)} "
    s = _ORACLE_FRAC.sub(frac, s)
    s = re.sub(r"(?<=\d)(?:\\,|\{,\})(?=\d)", ",", s)
    s = re.sub(r"\\[^A-Za-z]", " ", s)                 # \, \{ \\ ... : spacing/escapes
    return s.replace("\\", " ").replace("{", " ").replace("}", " ")


def _oracle_decimal(part):
    """'-1,234.5e3' -> Fraction, with an independent thousands/decimal check; None if malformed."""
    part = part.strip()
    neg = part.startswith("-")
    part = part[1:] if neg else part
    if not part or part[0] == "-":
        return None
    m = re.fullmatch(r"([0-9.,]+)(?:[eE]([-+]?[0-9]+))?", part)
    if m is None:
        return None
    mant, exp = m.group(1), m.group(2)
    if exp is None:
        mant = mant.rstrip(".,")                           # sentence punctuation
    if mant.count(".") > 1:
        return None
    ip, _, fp = mant.partition(".")
    if not all(c.isdigit() for c in fp) or not (ip or fp):
        return None
    if "," in ip:
        groups = ip.split(",")
        if not (1 <= len(groups[0]) <= 3 and groups[0][0] != "0"
                and all(len(g) == 3 for g in groups[1:]) and all(g.isdigit() for g in groups)):
            return None
        ip = "".join(groups)
    if ip and not ip.isdigit():
        return None
    if len(ip) + len(fp) > 1000 or (exp is not None and abs(int(exp)) > 1000):
        return None
    value = F(Decimal(f"{ip or '0'}.{fp or '0'}e{exp or 0}"))
    return -value if neg else value


def _oracle_atom_value(atom):
    if re.search(r"\d\s*-", atom):                         # a '-' after a digit: range/subtraction
        return None
    parts = atom.split("/")
    if len(parts) > 2:
        return None
    vals = [_oracle_decimal(p) for p in parts]
    if any(v is None for v in vals):
        return None
    if len(vals) == 2:
        return None if vals[1] == 0 else vals[0] / vals[1]
    return vals[0]


def oracle_value(s):
    """What number s's final answer denotes (None: unclear); written independently of the module."""
    box = _oracle_boxed(s)
    if box is not None:
        if not _oracle_tail_ok(s[box[1] + 1:]):
            return None                                    # boxed, then kept writing
        span = box[0]
    else:
        span = _oracle_phrase(s)
    if span is not None:
        atoms = _ORACLE_ATOM.findall(_oracle_normalise(span))
        return _oracle_atom_value(atoms[0]) if len(atoms) == 1 else None
    atoms = _ORACLE_ATOM.findall(_oracle_normalise(s))
    return _oracle_atom_value(atoms[-1]) if atoms else None


def _candidates(s):
    """Numbers a sloppy reader might see in s (plus the module's own reading)."""
    out = set()
    for run in re.findall(r"-?[0-9][0-9.,]*", s):
        core = run.strip(".,")
        for variant in (core, core.replace(",", ""), core.replace(",", "."), core.lstrip("-")):
            try:
                out.add(F(Decimal(variant)))
            except Exception:
                pass
    digits = re.findall(r"\d+", s)
    out.update(F(int(d)) for d in digits[-6:])
    for a, b in zip(digits[-4:], digits[-3:]):
        if int(b):
            out.add(F(int(a), int(b)))
    got = R._parse_number(R._extract_answer(s))
    if got is not None:
        out.add(got)
    return out


def _check_adversarial(s):
    accepted = [m for m in _candidates(s) if is_equivalent(s, m)]
    assert len(accepted) <= 1, (s, accepted)                # never equivalent to two different numbers
    if accepted:
        assert oracle_value(s) == accepted[0], (s, accepted[0], oracle_value(s))
    return bool(accepted)


# one code point per piece: hypothesis draws text much faster than lists of sampled pieces
_CODES = "".join(chr(0x100 + i) for i in range(len(PIECES)))
_DECODE = dict(zip(_CODES, PIECES))


def _decode(codes):
    return "".join(_DECODE[c] for c in codes)


def _compose(mode, junk_a, core, junk_b, end):
    return [junk_a + core + junk_b,                                   # anything
            junk_a + "\\boxed{" + core + "}" + junk_b,                 # a box around junk
            junk_a + "Answer: " + core + end + junk_b,                 # a phrase before junk
            junk_a + " " + core,                                       # a number-ish tail
            junk_a + "\\boxed{" + core + "}" + end][mode]              # a box at the very end


@settings(max_examples=8000, **FUZZ)
@given(st.integers(0, 4), st.text(_CODES, max_size=16), st.text(_CODES, min_size=1, max_size=6),
       st.text(_CODES, max_size=12), st.sampled_from(["", "\n", " ", "."]))
def test_fuzz_adversarial_against_oracle(mode, junk_a, core, junk_b, end):
    _check_adversarial(_compose(mode, _decode(junk_a), _decode(core), _decode(junk_b), end))


def test_seeded_adversarial_strings_against_oracle():
    rng = random.Random(20240611)
    accepted = 0
    n = 20_000
    for _ in range(n):
        def junk(k):
            return "".join(rng.choice(PIECES) for _ in range(k))
        s = _compose(rng.randrange(5), junk(rng.randrange(17)), junk(1 + rng.randrange(6)),
                     junk(rng.randrange(13)), rng.choice(["", "\n", " ", "."]))
        accepted += _check_adversarial(s)
    # the fuzz actually exercises acceptance (~10%: most random text after a box is a harmful tail)
    assert accepted > n // 20
