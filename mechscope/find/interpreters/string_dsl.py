"""The operation vocabulary of the string interpreter.

An :class:`Op` is the body of ``def _op(s):`` plus a description; it is compiled once, so the
code the interpreter emits is exactly the code it verified. Operations whose effect can be
*learned* from probes (character substitutions, deletions, ciphers, constant affixes) are not
enumerated here; :mod:`.string_search` infers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Op:
    """One operation ``str -> str`` (or ``str -> int`` when ``counts``)."""

    name: str
    body: str
    desc: str
    counts: bool = False
    fn: Callable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ns: dict = {}
        exec(f"def _op(s):\n    {self.body}\n", ns)
        self.fn = ns["_op"]

    def __call__(self, s):
        return self.fn(s)


def _ops() -> list[Op]:
    ops = [
        Op("reverse", "return s[::-1]", "reverse the string"),
        Op("upper", "return s.upper()", "convert to upper case"),
        Op("lower", "return s.lower()", "convert to lower case"),
        Op("swapcase", "return s.swapcase()", "swap the case of every letter"),
        Op("capitalize", "return s.capitalize()", "capitalise the first character and lower-case the rest"),
        Op("title", "return s.title()", "title-case every word"),
        Op("capitalize_words", "return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))", "capitalise the first letter of each word"),
        Op("sort_chars", "return ''.join(sorted(s))", "sort the characters"),
        Op("sort_chars_desc", "return ''.join(sorted(s, reverse=True))", "sort the characters in reverse order"),
        Op("dedupe", "return ''.join(c for i, c in enumerate(s) if i == 0 or c != s[i - 1])", "collapse runs of repeated characters"),
        Op("unique_chars", "return ''.join(dict.fromkeys(s))", "keep the first occurrence of each character"),
        Op("swap_pairs", "return ''.join(s[i + 1:i + 2] + s[i] for i in range(0, len(s), 2))", "swap adjacent pairs of characters"),
        Op("alt_case", "return ''.join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(s))", "alternate upper/lower case, starting upper"),
        Op("alt_case2", "return ''.join(c.lower() if i % 2 == 0 else c.upper() for i, c in enumerate(s))", "alternate lower/upper case, starting lower"),
        Op("even_chars", "return s[0::2]", "keep the characters at even positions"),
        Op("odd_chars", "return s[1::2]", "keep the characters at odd positions"),
        Op("mirror", "return s + s[::-1]", "append the reversed string"),
        Op("repeat2", "return s * 2", "repeat the string twice"),
        Op("repeat3", "return s * 3", "repeat the string three times"),
        Op("repeat_space", "return s + ' ' + s", "repeat the string, separated by a space"),
        Op("strip", "return s.strip()", "strip surrounding whitespace"),
        Op("remove_spaces", "return s.replace(' ', '')", "remove spaces"),
        Op("reverse_words", "return ' '.join(s.split(' ')[::-1])", "reverse the order of the words"),
        Op("reverse_words_split", "return ' '.join(s.split()[::-1])", "reverse the order of the words (normalising spaces)"),
        Op("reverse_each_word", "return ' '.join(w[::-1] for w in s.split(' '))", "reverse each word in place"),
        Op("sort_words", "return ' '.join(sorted(s.split()))", "sort the words"),
        Op("sort_words_len", "return ' '.join(sorted(s.split(), key=len))", "sort the words by length"),
        Op("acronym", "return ''.join(w[0] for w in s.split())", "take the first letter of each word"),
        Op("last_letters", "return ''.join(w[-1] for w in s.split())", "take the last letter of each word"),
        Op("first_word", "return s.split()[0] if s.split() else ''", "keep the first word"),
        Op("last_word", "return s.split()[-1] if s.split() else ''", "keep the last word"),
        Op("drop_first_word", "return ' '.join(s.split()[1:])", "drop the first word"),
        Op("drop_last_word", "return ' '.join(s.split()[:-1])", "drop the last word"),
        Op("longest_word", "return max(s.split(), key=len) if s.split() else ''", "keep the longest word"),
        Op("shortest_word", "return min(s.split(), key=len) if s.split() else ''", "keep the shortest word"),
        Op("word_lengths", "return ' '.join(str(len(w)) for w in s.split())", "replace each word by its length"),
        Op("pig_latin", "return ' '.join(w[1:] + w[:1] + 'ay' if w else w for w in s.split(' '))", "pig latin: move each word's first letter to its end and add 'ay'"),
        Op("double_words", "return ' '.join(w + ' ' + w for w in s.split())", "repeat every word"),
        Op("words_per_line", "return '\\n'.join(s.split())", "put each word on its own line"),
        Op("capitalize_each", "return ' '.join(w.capitalize() for w in s.split())", "capitalise each word (rest lower case)"),
        Op("sorted_unique", "return ''.join(sorted(set(s)))", "the sorted set of characters"),
        Op("first_half", "return s[:len(s) // 2]", "keep the first half"),
        Op("second_half", "return s[len(s) // 2:]", "keep the second half"),
        Op("first_half_up", "return s[:(len(s) + 1) // 2]", "keep the first half (rounding up)"),
        Op("second_half_up", "return s[(len(s) + 1) // 2:]", "keep the second half (rounding down)"),
        Op("middle_char", "return s[len(s) // 2] if s else ''", "the middle character"),
        Op("vowels_only", "return ''.join(c for c in s if c.lower() in 'aeiou')", "keep only the vowels"),
        Op("letters_only", "return ''.join(c for c in s if c.isalpha())", "keep only the letters"),
        Op("swap_ends", "return s[-1] + s[1:-1] + s[0] if len(s) > 1 else s", "swap the first and last characters"),
        Op("swap_first_last_word", "w = s.split()\n    return ' '.join(w[-1:] + w[1:-1] + w[:1]) if len(w) > 1 else s",
           "swap the first and last words"),
        Op("rotate_words_left", "w = s.split()\n    return ' '.join(w[1:] + w[:1]) if w else s", "move the first word to the end"),
        Op("rotate_words_right", "w = s.split()\n    return ' '.join(w[-1:] + w[:-1]) if w else s", "move the last word to the front"),
        Op("swap_word_ends", "return ' '.join(w[-1] + w[1:-1] + w[0] if len(w) > 1 else w for w in s.split(' '))",
           "swap the first and last letters of each word"),
    ]
    for k in (2, 3, 4):
        ops.append(Op(f"first{k}words", f"return ' '.join(s.split()[:{k}])", f"keep the first {k} words"))
        ops.append(Op(f"last{k}words", f"return ' '.join(s.split()[-{k}:])", f"keep the last {k} words"))
    for k in range(1, 7):
        ops.append(Op(f"words_longer{k}", f"return ' '.join(w for w in s.split() if len(w) > {k})", f"keep the words longer than {k} characters"))
        ops.append(Op(f"words_shorter{k}", f"return ' '.join(w for w in s.split() if len(w) < {k})", f"keep the words shorter than {k} characters"))
    for k in (3, 4):
        ops.append(Op(f"every{k}", f"return s[::{k}]", f"keep every {k}th character, starting with the first"))
    for k in (2, 3, 4):
        for j in range(k):
            ops.append(Op(f"drop_pos{k}_{j}", f"return ''.join(c for i, c in enumerate(s) if i % {k} != {j})",
                          f"drop the characters at positions {j}, {j + k}, {j + 2 * k}, ... (0-based)"))
    for k in range(1, 6):
        ops.append(Op(f"rotl{k}", f"return s[{k} % len(s):] + s[:{k} % len(s)] if s else s", f"rotate left by {k}"))
        ops.append(Op(f"rotr{k}", f"return s[-({k} % len(s)):] + s[:-({k} % len(s))] if s and {k} % len(s) else s", f"rotate right by {k}"))
    for k in range(1, 7):
        ops.append(Op(f"take{k}", f"return s[:{k}]", f"keep the first {k} characters"))
        ops.append(Op(f"drop{k}", f"return s[{k}:]", f"drop the first {k} characters"))
        ops.append(Op(f"take_last{k}", f"return s[-{k}:]", f"keep the last {k} characters"))
        ops.append(Op(f"drop_last{k}", f"return s[:-{k}]", f"drop the last {k} characters"))
    for sep in "-_*.|, +":
        ops.append(Op(f"interleave{sep!r}", f"return {sep!r}.join(s)", f"insert {sep!r} between characters"))
        ops.append(Op(f"join_words{sep!r}", f"return {sep!r}.join(s.split())", f"join the words with {sep!r}"))
    return ops


def _counts() -> list[Op]:
    return [
        Op("len", "return len(s)", "the number of characters", True),
        Op("count_words", "return len(s.split())", "the number of words", True),
        Op("count_distinct", "return len(set(s))", "the number of distinct characters", True),
        Op("count_distinct_ci", "return len(set(s.lower()))", "the number of distinct characters, ignoring case", True),
        Op("count_vowels", "return sum(c.lower() in 'aeiou' for c in s)", "the number of vowels", True),
        Op("count_upper", "return sum(c.isupper() for c in s)", "the number of upper-case letters", True),
        Op("count_digits", "return sum(c.isdigit() for c in s)", "the number of digits", True),
        Op("count_letters", "return sum(c.isalpha() for c in s)", "the number of letters", True),
        Op("longest_word_len", "return max((len(w) for w in s.split()), default=0)", "the length of the longest word", True),
        Op("sum_digits", "return sum(int(c) for c in s if c.isdigit())", "the sum of the digits", True),
    ]


def _as_text(count: Op) -> Op:
    """A count written as text (``str(len(s))``), to be concatenated with other pieces."""
    expr = count.body.removeprefix("return ")
    return Op(f"{count.name}_text", f"return str({expr})", count.desc)


def _predicates() -> list[Op]:
    """Conditions on the input for conditional programs (``A(s) if cond(s) else B(s)``)."""
    table = [  # name, body of the test on ``s``, what it says
        ("len_even", "return len(s) % 2 == 0", "the string has an even number of characters"),
        ("len_mult3", "return len(s) % 3 == 0", "the length is a multiple of 3"),
        ("words_even", "return len(s.split()) % 2 == 0", "the string has an even number of words"),
        ("vowel_first", "return s[:1].lower() in 'aeiou' and s[:1] != ''", "the string starts with a vowel"),
        ("vowel_last", "return s[-1:].lower() in 'aeiou' and s[-1:] != ''", "the string ends with a vowel"),
        ("upper_first", "return s[:1].isupper()", "the string starts with an upper-case letter"),
        ("digit_first", "return s[:1].isdigit()", "the string starts with a digit"),
        ("has_digit", "return any(c.isdigit() for c in s)", "the string contains a digit"),
        ("has_upper", "return any(c.isupper() for c in s)", "the string contains an upper-case letter"),
        ("has_space", "return ' ' in s", "the string contains a space"),
        ("all_letters", "return s.isalpha()", "the string consists only of letters"),
        ("all_lower", "return s.islower()", "the string is all lower case"),
        ("palindrome", "return s == s[::-1]", "the string is a palindrome"),
        ("vowels_even", "return sum(c.lower() in 'aeiou' for c in s) % 2 == 0", "the number of vowels is even"),
        ("more_vowels", "return 2 * sum(c.lower() in 'aeiou' for c in s) > sum(c.isalpha() for c in s)", "more than half of the letters are vowels"),
    ]
    preds = [Op(*row) for row in table]
    for k in range(1, 16):
        preds.append(Op(f"len_gt{k}", f"return len(s) > {k}", f"the string is longer than {k} characters"))
    for k in range(1, 5):
        preds.append(Op(f"words_gt{k}", f"return len(s.split()) > {k}", f"the string has more than {k} words"))
    for c in "abcdefghijklmnopqrstuvwxyz":
        preds.append(Op(f"has_{c}", f"return {c!r} in s.lower()", f"the string contains the letter {c!r} (any case)"))
    return preds


OPS: list[Op] = _ops()
PREDICATES: list[Op] = _predicates()
COUNTS: list[Op] = _counts()
COUNTS_AS_TEXT: list[Op] = [_as_text(c) for c in COUNTS]
IDENTITY = Op("identity", "return s", "leave the string unchanged")
EMPTY = Op("empty", "return ''", "nothing")
