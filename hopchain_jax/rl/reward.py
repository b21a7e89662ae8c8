"""Verifiable rewards for RLVR on single-number answers, and SAPO group-normalised advantages (SPEC §4).

Every ground-truth answer is one number (an int or an exact decimal). A response earns reward 1 iff its
final answer span parses to exactly that number (exact rational comparison, no float tolerance).

Pipeline: ``extract_answer`` (find the final answer span) -> ``parse_number`` (span -> ``Fraction`` or
``None``) -> ``is_equivalent`` / ``reward``. The guiding rule is *never accept a wrong number*: whenever
the span is ambiguous (two numbers, a range, an operator, a qualifier such as "at least", a symbolic
constant, a malformed thousands group, ...) the parser returns ``None`` instead of guessing.

Answer-span priority (``extract_answer``):
  1. the LAST terminated ``\\boxed{...}`` / ``\\fbox{...}`` in the whole text ("last" = the one whose
     closing brace comes last; nested braces are balanced, ``\\{``/``\\}`` are not grouping braces,
     unterminated boxes are ignored) -- but only when it ENDS the response: the tail after its closing
     brace must be harmless, i.e. at most ``MAX_BOX_TAIL_CHARS`` characters (raw length, whitespace
     included) holding no digit (ASCII or any other numeric character: "²", "½", "٣"), no brace ``{``/``}``
     and no backslash except in the math-mode closers ``\\)`` / ``\\]`` -- so no further box opener and
     no escaped ``\\{``/``\\}``. Whitespace, punctuation and a short digit-free sentence are harmless:
     ``\\boxed{7}.``, ``$\\boxed{7}$.``, ``**\\boxed{7}**``, ``\\(\\boxed{7}\\)``, ``\\[\\boxed{7}\\]``,
     ``\\boxed{7}\\nI hope this helps!``, ``$\\boxed{7}$ </s>`` (an end marker left in the text; "<", "/",
     ">" and letters are harmless). When the text HAS a terminated box but the tail after the last one
     is not harmless, the response has NO answer (``None``, reward 0) and rules 2-3 are NOT tried: the
     model boxed something and then kept writing (the reward hack ``\\boxed{1}4}4}4}...`` up to the
     length cap, ``\\boxed{7} and then 8``, ``\\boxed{7}\\n\\boxed{8`` cut off by the cap);
  2. else (no terminated box at all), within the last ``FALLBACK_WINDOW`` characters, the last
     "Answer:" / "answer is" / "final answer" phrase (case-insensitive) and the rest of its line (or
     the next line with letters/digits when the rest of the line has none, e.g. ``**Final Answer**\\n7``);
  3. else, within the same window, the last number-like token (with the chunks an operator ties to
     it: "3/ 4", "722- 88") together with one neighbouring
     whitespace-delimited chunk on each side, extended across operator/connector chunks ("-", "/",
     "or", "to", any chunk without letters or digits except "=") and across chunks joined by an
     operator ("722- 88"), so that the parser can see "not 7", "2 - 3", "7 million". Chunks are
     split at whitespace outside braces, so ``\\frac{ 3 }{ 4 }`` stays whole.
  An empty span counts as "nothing found" (``None``); a found-but-empty box does NOT fall back.

Accepted number forms (``parse_number``): integers, decimals (".5", "5.", "-0.25"), fractions
("3/4", "3 / 4", ``\\frac{3}{4}``, ``\\dfrac``, ``\\tfrac`` with plain numeric numerator/denominator),
thousands separators with groups of exactly three digits ("1,234", "1,234,567.5", "1{,}234",
``1\\,234``, thin spaces), signs "+", "-", unicode minus "−", scientific notation ("1e3", "2.5E-2"),
LaTeX wrappers ($, ``\\text{}``, ``\\mathrm{}``, ``\\boxed{}``, ``\\left(``, spacing commands; ``\\!``
glues), units/words around the number ("12 dots", "$5", "5 %", "90^\\circ", "12 cm^2", "It is 7.").

Rejected (``None``): unbalanced braces (malformed LaTeX), more than one number (except one ``a/b``
fraction whose "/" is not separated from the numbers by braces), ranges ("2-3", "2–3"), mixed numbers
("1 1/2"), malformed groups ("1,23", "0,500", "1.2.3"), any remaining operator (+, -, *, ^, ×, ÷, !,
|, <, >, ≈, ~ before a number, ...), any LaTeX command not known to be harmless (``\\pi``,
``\\sqrt``, ``\\times``, ...), non-ASCII digits ("²" outside "cm²", "½", "٣"), qualifiers and number
words anywhere in the span ("not", "approximately", "at least", "than", "or", "million", "half",
"seven", ...) or right before the number ("about 7", "over 7"), a number glued to a variable-like
letter ("2x", "3i", "x2", "5k") or followed by a one-letter word ("5 x"; unit letters such as m, g, s
are fine), a sign after a letter/digit ("x-5") or a one-letter word ("x -5"), "nan", "inf", empty
strings, spans over ``MAX_SPAN_CHARS`` characters, more than ``MAX_DIGITS`` digits, exponents beyond
``MAX_EXPONENT``.

Robustness: the public functions never raise for any response string, use only linear-time regexes
and cap their work (the box scan is linear in the text; the box-tail check refuses tails longer than
``MAX_BOX_TAIL_CHARS`` before reading them; the phrase/number fallback looks only at the last
``FALLBACK_WINDOW`` characters; parsing refuses spans longer than ``MAX_SPAN_CHARS``).

Pure Python + numpy; no JAX import.
"""
from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np

__all__ = ["extract_answer", "parse_number", "answer_to_fraction", "is_equivalent", "reward", "group_advantages",
           "FALLBACK_WINDOW", "MAX_BOX_TAIL_CHARS", "MAX_SPAN_CHARS", "MAX_DIGITS", "MAX_EXPONENT"]

FALLBACK_WINDOW = 4000   # characters at the end of a response searched by the phrase/number fallback
MAX_BOX_TAIL_CHARS = 200  # the last box counts only if at most this many (harmless) characters follow it
MAX_SPAN_CHARS = 2000    # longer answer spans are refused by parse_number
MAX_DIGITS = 1000        # digits in one number (well below CPython's 4300-digit int/str limit)
MAX_EXPONENT = 1000      # |e| in scientific notation

# ----------------------------------------------------------------------------------------- extraction

_BOX_START_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
# a digit, a brace, or a backslash other than the math-mode closers "\)" / "\]" ("\\)" is rejected:
# its first backslash is followed by a backslash)
_BOX_TAIL_BAD_RE = re.compile(r"[0-9{}]|\\(?![)\]])")
_PHRASE_RE = re.compile(r"\b(?:final\s+answer(?:\s+is\b|\s*:)?|answer\s+is\b|answer\s*:)\s*:?",
                        re.IGNORECASE)
_ALNUM_RE = re.compile(r"[^\W_]")
_OP_CHARS = r"[-+\u2212\u2010-\u2015/×*^÷·⋅±∓<>≤≥≈~]|\\(?:times|cdot|div|pm|mp)"
_OP_END_RE = re.compile(rf"(?:{_OP_CHARS})$")
_OP_START_RE = re.compile(_OP_CHARS)
_ASCII_DIGIT_RE = re.compile(r"[0-9]")
_NONSPACE_RE = re.compile(r"\S+")
_OPERATOR_CHUNK_RE = re.compile(
    r"[-+\u2212\u2010-\u2015/×*^÷·⋅±∓<>≤≥≈~:,]+"
    r"|\\(?:times|cdot|div|pm|mp|le|ge|leq|geq|approx|sim|to)"
    r"|or|to|and|minus|plus|times|over|by|x|until|through", re.IGNORECASE)


def _last_boxed(text: str) -> tuple[int, int] | None:
    """(content start, closing-brace index) of the terminated box whose closing brace comes last, or
    None (linear scan)."""
    first = _BOX_START_RE.search(text)
    if first is None:
        return None
    stack: list[int] = []          # content start for a box opener, -1 for a plain "{"
    best: tuple[int, int] | None = None
    for tok in _BOX_TOKEN_RE.finditer(text, first.start()):
        g = tok.group()
        if len(g) == 2 and g[0] == "\\":          # \{ or \}: escaped, not a group
            continue
        if g[-1] == "{":
            stack.append(tok.end() if len(g) > 1 else -1)
        elif stack:                                # "}" (an unmatched one is ignored)
            start = stack.pop()
            if start >= 0:
                best = (start, tok.start())        # later closers always come later: last wins
    return best


def _harmless_box_tail(tail: str) -> bool:
    """The text after the last box's closing brace leaves that box the final answer (module docstring)."""
    if len(tail) > MAX_BOX_TAIL_CHARS:
        return False
    if _BOX_TAIL_BAD_RE.search(tail):
        return False
    return not _has_numeric(tail)


def _phrase_span(tail: str) -> str | None:
    """Rest of the line after the last answer phrase; None when there is no phrase."""
    last = None
    for last in _PHRASE_RE.finditer(tail):
        pass
    if last is None:
        return None
    rest = tail[last.end():]
    nl = rest.find("\n")
    line = rest if nl < 0 else rest[:nl]
    if _ALNUM_RE.search(line) or nl < 0:
        return line
    for nxt in rest[nl + 1:].split("\n"):
        if _ALNUM_RE.search(nxt):
            return nxt
    return ""


def _has_numeric(s: str) -> bool:
    if _ASCII_DIGIT_RE.search(s):
        return True
    return not s.isascii() and any(c.isnumeric() for c in s)


def _chunks(s: str) -> list[tuple[int, int]]:
    """Whitespace-delimited chunks; whitespace inside braces does not split (``\\{``/``\\}`` ignored)."""
    if "{" not in s and "}" not in s:
        return [m.span() for m in _NONSPACE_RE.finditer(s)]
    out: list[tuple[int, int]] = []
    depth, start, i, n = 0, -1, 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in "{}":
            if start < 0:
                start = i
            i += 2
            continue
        if depth == 0 and c.isspace():
            if start >= 0:
                out.append((start, i))
                start = -1
        else:
            if start < 0:
                start = i
            if c == "{":
                depth += 1
            elif c == "}" and depth > 0:
                depth -= 1
        i += 1
    if start >= 0:
        out.append((start, n))
    return out


def _number_span(tail: str, truncated: bool) -> str | None:
    """The last number-like chunk with its neighbours (see module docstring), or None."""
    chunks = _chunks(tail)
    idx = -1
    for k in range(len(chunks) - 1, -1, -1):
        a, b = chunks[k]
        if _has_numeric(tail[a:b]):
            idx = k
            break
    if idx < 0:
        return None

    def chunk(k: int) -> str:
        return tail[chunks[k][0]:chunks[k][1]]

    def connector(k: int) -> bool:
        c = chunk(k)
        return c != "=" and (_OPERATOR_CHUNK_RE.fullmatch(c) is not None or not _ALNUM_RE.search(c))

    def tied(k: int) -> bool:        # chunk k-1 and chunk k are joined by an operator: "722- 88", "3 /4"
        return bool(_OP_END_RE.search(chunk(k - 1)) or _OP_START_RE.match(chunk(k)))

    lo = idx
    while lo > 0 and tied(lo):                            # the number's own operands: "3/ 4", "722- 88"
        lo -= 1
    lo = max(lo - 1, 0)                                   # one chunk of context: "not 7", "7-} 3/ 4"
    while lo > 0 and (connector(lo) or tied(lo)):         # keep the left operand of "2 - 3", "3 or 4"
        lo -= 1
    hi = min(idx + 1, len(chunks) - 1)
    while idx < hi < len(chunks) - 1 and (connector(hi) or tied(hi + 1)):   # "7 apples -"
        hi += 1
    if truncated and chunks[lo][0] == 0:
        return None                      # the first chunk may be cut by the window: never read it
    return tail[chunks[lo][0]:chunks[hi][1]]


def _extract_answer(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    box = _last_boxed(text)
    if box is not None:
        if not _harmless_box_tail(text[box[1] + 1:]):
            return None                      # boxed, then kept writing: no answer, and no fallback
        span = text[box[0]:box[1]]
    else:
        truncated = len(text) > FALLBACK_WINDOW
        tail = text[-FALLBACK_WINDOW:] if truncated else text
        span = _phrase_span(tail)
        if span is None:
            span = _number_span(tail, truncated)
    if span is None:
        return None
    span = span.strip()
    return span or None


def extract_answer(text: str) -> str | None:
    """The model's final answer span (stripped), or None when nothing is found.

    Priority: the last terminated ``\\boxed{...}``/``\\fbox{...}`` (whole text), provided what follows
    its closing brace is a harmless tail: at most ``MAX_BOX_TAIL_CHARS`` characters with no digit (any
    numeric character), no brace and no backslash other than ``\\)``/``\\]`` -- whitespace, punctuation,
    ``$``, ``**``, a short digit-free sentence ("\\boxed{7}. I hope this helps!") or an end marker
    ("</s>"). If the text has a terminated box but that tail is not harmless ("\\boxed{1}4}4}4}",
    "\\boxed{7} and then 8", "\\boxed{7}\\n\\boxed{8"), the answer is None -- the fallbacks are not
    tried. Only when there is no terminated box at all: the last "Answer:"/"answer is"/"final answer"
    phrase and the rest of its line; else the last number-like token with a little context (both
    fallbacks only look at the last ``FALLBACK_WINDOW`` chars). Never raises.
    """
    try:
        return _extract_answer(text)
    except Exception:  # pragma: no cover - defensive: a reward must never crash training
        return None


# -------------------------------------------------------------------------------------------- parsing

_SIGN_TRANS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-", "\uff0b": "+", "\ufe62": "+"})
_DEGREE_RE = re.compile(r"\^\s*(?:\{\s*)?\\circ\s*\}?|\\(?:degree|textdegree)(?![A-Za-z])")
_GROUP_SEP_RE = re.compile(r"(?<=[0-9])(?:\{,\}|\\,|[\u00a0\u2009\u202f\u2006\u2008])(?=[0-9])")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_PART_RE = re.compile(r"\s*[+\-]?[0-9]+(?:\.[0-9]+)?\s*")
_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|textnormal|textup|mathrm|mathbf|mathit|mathsf|"
    r"mathtt|mathnormal|mbox|hbox|boxed|fbox|operatorname|bm|boldsymbol)\s*(?=\{)")
_SPACING_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg|displaystyle|"
    r"textstyle|scriptstyle|quad|qquad|enspace|thinspace|medspace|thickspace)(?![A-Za-z])"
    r"|\\[,;: {}()\[\]\\]")
_TILDE_APPROX_RE = re.compile(r"~\s*[0-9.+\-]")
_DENY_CHAR_RE = re.compile(r"[\^|<>×÷·⋅∙∗±∓√∛∜π∞≈≅≃∼≠≤≥≦≧‰‱…⁄∕]")
_EMPH_OP_RE = re.compile(r"[^\W_][*_]+[^\W_]|\s[*_]+\s|[0-9]\s*!")
_DASH_ADJ_RE = re.compile(r"[\u2010-\u2015]\s*[0-9.]|[0-9.]\s*[\u2010-\u2015]")
# words that make the span something other than "exactly this number", anywhere in the span
_DENY_WORDS = (
    # negation, approximation, bounds, alternatives
    "not", "never", "except", "approx", "approximately", "roughly", "nearly", "almost", "circa",
    r"at\s+least", r"at\s+most", "than", "between", "or", "either", "range", "ranging", "upto",
    r"up\s+to", "plus", "minus", "negative",
    # operations and symbolic values
    "divided", "multiplied", "squared", "cubed", r"square\s+of", r"cube\s+of", "root", "roots", "sqrt",
    "power", "factorial", "pi", "infinity", "infinite", "inf", "nan", "undefined",
    # number words and multipliers ("one" is left out: "the one on the left")
    "zero", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
    "hundreds", "thousand", "thousands", "million", "millions", "billion", "billions", "trillion",
    "trillions", "lakh", "crore", "dozen", "dozens", "half", "halves", "quarter", "quarters", "thirds",
    "fourths", "fifths", "tenths", "hundredths", "thousandths", "twice", "thrice", "double", "triple",
)
_DENY_WORD_RE = re.compile(
    r"(?=[A-Za-z])(?<![A-Za-z])(?:" + "|".join(_DENY_WORDS) + r")(?![A-Za-z])|[A-Za-z]n['’]t(?![A-Za-z])",
    re.IGNORECASE)
# qualifiers that only matter right before the number ("about 7", "over 7"; "7 dots above the line" is fine)
_PRE_WORDS = ("about", "around", "over", "under", "above", "below", "more", "less", "fewer", "greater",
              "smaller", "larger", "bigger", "higher", "lower", "within", "exceeding", "beyond", "past",
              "max", "min", "maximum", "minimum", "times", "by")
_PRE_WORD_RE = re.compile(r"(?<![A-Za-z])(?:" + "|".join(_PRE_WORDS) + r")[\s$(\[:#]*$", re.IGNORECASE)
# a unit with a square/cube power right after a number: "12 cm^2", "12\,\text{m}^{2}", "12 cm²"
_UNIT_WORDS = (r"(?:mm|cm|dm|km|m|in|inch|inches|ft|feet|foot|yd|yards?|mi|miles?|units?|u|px|pixels?|"
               r"squares?|cells?|blocks?|tiles?|meters?|metres?|centimeters?|centimetres?|millimeters?|"
               r"millimetres?|kilometers?|kilometres?)")
_UNIT_POW_RE = re.compile(
    r"([0-9.](?:\s|~|\\[,;: !]|\\(?:text|textrm|mathrm|mbox|rm)\s*\{)*" + _UNIT_WORDS
    + r"(?![A-Za-z])(?:\s*\})?)\s*(?:\^\s*(?:\{\s*)?[23]\s*\}?|[²³])")
_TOKEN_RE = re.compile(r"([+\-]?)((?:[0-9]|\.[0-9])[0-9.,]*)((?:[eE][+\-]?[0-9]+)?)")
_MANT_RE = re.compile(r"(?:[1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+")
_VARLIKE_RE = re.compile(r"[A-Za-z_\u0370-\u04ff]")     # Latin, Greek, Cyrillic: variables, not CJK text
_LETTERS_RE = re.compile(r"[A-Za-z]+")
_NEXT_LETTER_RE = re.compile(r"\s+([A-Za-z\u0370-\u04ff])(?![A-Za-z\u0370-\u04ff])")
_STRAY_MINUS_RE = re.compile(r"(?<![^\W\d_])-|-(?![^\W\d_])")
# single letters glued to a number that are units, not variables/multipliers ("5m", "3s", "2L")
_UNIT_LETTERS = frozenset("mgshlLVWAJNCF")
_MARK = "\x01"
_BRACE_RE = re.compile(r"\\[{}]|[{}]")          # escaped braces are matched (and skipped) first


def _frac_sub(m: re.Match) -> str:
    num, den = m.group(1), m.group(2)
    if not (_FRAC_PART_RE.fullmatch(num) and _FRAC_PART_RE.fullmatch(den)):
        raise _Reject
    s = m.string
    left = "" if m.start() > 0 and s[m.start() - 1] in "+-" else " "
    return f"{left}{num.strip()}/{den.strip()} "


class _Reject(Exception):
    """Internal: the span is not one unambiguous number."""


def _token_value(tok: re.Match) -> Fraction | None:
    sign, mant, exp = tok.group(1), tok.group(2), tok.group(3)
    if ".." in mant:                       # "3.14159..." is not exactly 3.14159
        return None
    if not _MANT_RE.fullmatch(mant):
        if exp:
            return None
        mant = mant.rstrip(".,")           # sentence punctuation: "7.", "1,234,", "1.5."
        if not mant or not _MANT_RE.fullmatch(mant):
            return None
    digits = mant.replace(",", "")
    ip, _, fp = digits.partition(".")
    if len(ip) + len(fp) > MAX_DIGITS:
        return None
    value = Fraction(int((ip or "0") + fp), 10 ** len(fp))
    if exp:
        e_digits = exp[1:].lstrip("+-")
        if len(e_digits) > 6:
            return None
        e = int(exp[1:])
        if abs(e) > MAX_EXPONENT:
            return None
        value = value * 10 ** e if e >= 0 else value / 10 ** (-e)
    return -value if sign == "-" else value


def _check_context(t: str, tok: re.Match) -> bool:
    """The characters around one number token make it an unambiguous number."""
    begin, end = tok.start(), tok.end()
    sign = tok.group(1)
    if begin > 0:
        c = t[begin - 1]
        if _VARLIKE_RE.match(c) or c in ".,+-)]":
            return False
        if _PRE_WORD_RE.search(t, max(0, begin - 40), begin):   # "about 7", "over 7", "times 3"
            return False
        if sign:
            left = t[:begin].rstrip()
            if left:
                p = left[-1]
                if p.isdigit() or p in ")]":
                    return False
                if t[begin - 1].isspace():
                    j = len(left)
                    while j > 0 and left[j - 1].isascii() and left[j - 1].isalpha():
                        j -= 1
                    if len(left) - j == 1:                  # "x -5" reads as x − 5
                        return False
    if end < len(t):
        d = t[end]
        if d in "(_":
            return False
        if _VARLIKE_RE.match(d):
            w = _LETTERS_RE.match(t, end)
            if w is None or (len(w.group()) == 1 and w.group() not in _UNIT_LETTERS):
                return False
        w = _NEXT_LETTER_RE.match(t, end)              # "5 x", "5 i", "974 k": a variable/multiplier
        if w and w.group(1) not in _UNIT_LETTERS and w.group(1) not in "aAI":
            return False
    return True


def _balanced(t: str) -> bool:
    depth = 0
    for c in _BRACE_RE.findall(t):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _parse_number(s: str) -> Fraction | None:
    if not isinstance(s, str) or len(s) > MAX_SPAN_CHARS:
        return None
    t = s.translate(_SIGN_TRANS)
    t = _UNIT_POW_RE.sub(r"\1 ", t)                     # "12 cm^2" -> "12 cm": the power is the unit's
    if not t.isascii() and any(c.isnumeric() and not ("0" <= c <= "9") for c in t):
        return None                                     # "²", "½", "٣", "三": never guess
    if not _balanced(t):                                # malformed LaTeX ("1/\\boxed{2"): never guess
        return None
    # LaTeX normalisation
    t = _DEGREE_RE.sub(" ° ", t)
    t = t.replace("\\%", "%").replace("\\$", "$")
    t = _GROUP_SEP_RE.sub(",", t)
    try:
        t = _FRAC_RE.sub(_frac_sub, t)
    except _Reject:
        return None
    t = _WRAPPER_RE.sub(" ", t)
    t = t.replace("\\!", "")                          # negative thin space glues: "5\\!i" is "5i"
    t = _SPACING_RE.sub(" ", t)
    if "\\" in t:                                       # unknown/math command: \pi, \sqrt, \times ...
        return None
    # braces -> spaces; a same-length copy keeps them as barriers for the a/b check below, so that
    # "7\\boxed{/2}" or "3/{4}" never reads as a fraction
    marked = t.replace("$", " ").replace("{", _MARK).replace("}", _MARK)
    t = marked.replace(_MARK, " ")
    if _TILDE_APPROX_RE.search(t):
        return None
    t = t.replace("~", " ")
    if (_DENY_CHAR_RE.search(t) or _EMPH_OP_RE.search(t) or _DASH_ADJ_RE.search(t)
            or _DENY_WORD_RE.search(t)):
        return None
    toks = list(_TOKEN_RE.finditer(t))
    if not toks or len(toks) > 2:
        return None
    if len(toks) == 2 and marked[toks[0].end():toks[1].start()].strip() != "/":
        return None
    for tok in toks:
        if not _check_context(t, tok):
            return None
    first, last = toks[0], toks[-1]
    left, right = t[:first.start()], t[last.end():]
    if left.rstrip().endswith("/") or right.lstrip().startswith("/"):
        return None
    residue = left + " " + right
    if "+" in residue or _STRAY_MINUS_RE.search(residue):
        return None
    values = [_token_value(tok) for tok in toks]
    if any(v is None for v in values):
        return None
    if len(values) == 2:
        if values[1] == 0:
            return None
        return values[0] / values[1]
    return values[0]


def parse_number(s: str) -> Fraction | None:
    """Parse an answer span into an exact ``Fraction``; ``None`` when it is not exactly one number.

    See the module docstring for the accepted and rejected forms. Never raises.
    """
    try:
        return _parse_number(s)
    except Exception:  # pragma: no cover - defensive
        return None


# ---------------------------------------------------------------------------------------- equivalence

def _answer_to_fraction(answer) -> Fraction:
    """Ground truth -> exact Fraction. Floats go through ``Decimal(repr(x))`` (no binary noise).

    Raises TypeError/ValueError for a gold answer that is not one finite number (a data bug)."""
    if isinstance(answer, np.ndarray):
        if answer.size != 1:
            raise ValueError(f"answer must be one number, got an array of shape {answer.shape}")
        answer = answer.reshape(())[()]
    if isinstance(answer, (bool, np.bool_)):
        raise TypeError("answer must be a number, not a bool")
    if isinstance(answer, Fraction):
        return answer
    if isinstance(answer, numbers.Integral):
        return Fraction(int(answer))
    if isinstance(answer, Decimal):
        if not answer.is_finite():
            raise ValueError(f"answer is not finite: {answer!r}")
        return Fraction(answer)
    if isinstance(answer, float):                        # includes np.float64
        x = float(answer)
        if not math.isfinite(x):
            raise ValueError(f"answer is not finite: {answer!r}")
        return Fraction(Decimal(repr(x)))
    if isinstance(answer, np.floating):                  # float32/float16: shortest repr of that type
        if not np.isfinite(answer):
            raise ValueError(f"answer is not finite: {answer!r}")
        return Fraction(Decimal(str(answer)))
    if isinstance(answer, numbers.Rational):
        return Fraction(answer.numerator, answer.denominator)
    if isinstance(answer, str):
        value = parse_number(answer)
        if value is None:
            raise ValueError(f"answer string is not one number: {answer[:80]!r}")
        return value
    raise TypeError(f"unsupported answer type {type(answer).__name__}")


answer_to_fraction = _answer_to_fraction   # public: the gold answer as the reward compares it (eval/scoring.py)


def is_equivalent(response: str, answer) -> bool:
    """True iff the response's final answer (``extract_answer`` + ``parse_number``) equals ``answer``
    exactly (rational equality: "7.0" == 7, "3/4" == 0.75, "7.5" != 7).

    ``answer``: int, float, str, Fraction or Decimal (numpy scalars / 1-element arrays accepted).
    Never raises for any ``response``; raises TypeError/ValueError if ``answer`` itself is not one
    finite number.
    """
    target = _answer_to_fraction(answer)
    got = parse_number(extract_answer(response))
    return got is not None and got == target


def reward(response: str, answer) -> float:
    """SPEC §4 reward: 1.0 if ``is_equivalent(response, answer)`` else 0.0."""
    return 1.0 if is_equivalent(response, answer) else 0.0


# ----------------------------------------------------------------------------------------- advantages

def group_advantages(rewards: np.ndarray, eps: float = 1e-6, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """SAPO group-normalised advantages (SPEC §4); scale=False: not divided by the std (Dr. GRPO).

    Args:
      rewards: ``[n_prompts, G]`` rewards, one row per prompt (its group of G sampled responses).
      eps: added to the per-group population std (``ddof=0``).

    Returns:
      advantages: ``[n_prompts, G]`` float32, ``A = (R - mean(R)) / (std(R) + eps)`` (``R - mean(R)`` with
        scale=False) per row; rows whose
        rewards are all equal carry no signal and are exactly 0.
      zero_variance: ``[n_prompts]`` bool, True for the rows whose rewards are all equal (G == 1 or an
        empty group counts as all equal).

    Raises ValueError for a non-2-D input or non-finite rewards.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [n_prompts, G], got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    n, g = r.shape
    if g == 0:
        return np.zeros((n, 0), np.float32), np.ones((n,), bool)
    zero_var = np.all(r == r[:, :1], axis=1)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        adv = (r - mean) / (std + eps) if scale else r - mean
    adv[zero_var] = 0.0
    return adv.astype(np.float32), zero_var
