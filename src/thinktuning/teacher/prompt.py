"""The text side of the ThinkTuning teacher: prompt, demonstrations, tagged feedback.

The teacher reads a student's whole response and answers with three tagged parts (opinion, reason,
phrase). The reason and phrase are written in the *student's* first-person voice, because they are
spliced straight after the student's own tokens and trained on as if the student had thought them.

Everything here is plain text handling with no model dependency, so that the splice, the reward and the
tests can rely on one definition of "well-formed feedback". The prompt is kept short on purpose: the
embedded teacher is a 135M model with a small context window, so the system text plus the four
demonstrations stay under about 5,500 characters (~1,400 Llama-style tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEMONSTRATIONS",
    "OPINIONS",
    "SYSTEM_PROMPT",
    "TAGS",
    "Demonstration",
    "Feedback",
    "build_messages",
    "feedback_text",
    "parse_feedback",
    "render_feedback",
    "user_message",
]

OPINIONS = ("correct", "incorrect")
TAGS = ("opinion", "reason", "phrase")
BEHAVIOURS = ("self-conflict", "self-agreement", "self-consultation", "self-critique")
REFERENCE_KINDS = ("answer", "solution")

SYSTEM_PROMPT = (
    "You review a student's solution to a math problem. Write your feedback as the student's own "
    'afterthought: first person ("I"), as if the student paused to look back at the work.\n'
    "Answer with exactly three tags:\n"
    "<opinion>correct or incorrect</opinion>\n"
    "<reason>A short reflection in the student's voice: what holds and what went wrong.</reason>\n"
    "<phrase>A short continuation in the student's voice that reaches the right solution and ends "
    "with the final answer in \\boxed{}.</phrase>\n"
    "Reflect in one of four ways: notice where the work contradicts the problem, retrace the steps and "
    "agree, ask yourself a mentor's pointed question, or admit careless work and check it properly."
)


@dataclass(frozen=True)
class Demonstration:
    """One worked example shown to the teacher as a user/assistant turn pair.

    `behaviour` names the cognitive behaviour the example teaches, so tests and reports can check that
    all four are present and in the order the method describes.
    """

    behaviour: str
    question: str
    response: str
    opinion: str
    reason: str
    phrase: str


# Our own grade-school problems. Responses use ASCII arithmetic ("*", "-") because it tokenizes cheaply
# and matches how small students write. Each incorrect response carries exactly one mistake, so the
# reflection has a single clear thing to point at.
DEMONSTRATIONS: tuple[Demonstration, ...] = (
    Demonstration(
        behaviour="self-conflict",
        question=(
            "A baker makes 24 muffins. She sells 3 boxes with 5 muffins in each box and gives 4 muffins "
            "to a neighbour. How many muffins are left?"
        ),
        response=(
            "She sells 3 boxes of 4 muffins, so 3 * 4 = 12 muffins.\n"
            "Then 24 - 12 - 4 = 8 muffins are left.\n"
            "The answer is \\boxed{8}."
        ),
        opinion="incorrect",
        reason=(
            "Wait, the problem says each box holds 5 muffins, but I used 4 per box. The 4 muffins for the "
            "neighbour are right, so only the number sold is wrong."
        ),
        phrase=(
            "Let me redo it with 5 per box: 3 * 5 = 15 muffins sold. Then 24 - 15 - 4 = 5 muffins are "
            "left. The answer is \\boxed{5}."
        ),
    ),
    Demonstration(
        behaviour="self-agreement",
        question=(
            "Tom has 3 packs of 12 pencils. He gives 10 pencils to his sister. How many pencils does he "
            "have now?"
        ),
        response=(
            "3 packs of 12 pencils is 3 * 12 = 36 pencils.\n"
            "After giving away 10, he has 36 - 10 = 26 pencils.\n"
            "The answer is \\boxed{26}."
        ),
        opinion="correct",
        reason=(
            "Let me retrace my steps. Three packs of 12 is 36 pencils, and giving 10 away means I "
            "subtract, which is what I did. Each step matches the problem."
        ),
        phrase=(
            "Checking the last step: 36 - 10 = 26, and 26 + 10 = 36. So Tom has 26 pencils. The answer "
            "is \\boxed{26}."
        ),
    ),
    Demonstration(
        behaviour="self-consultation",
        question=(
            "A movie ticket costs $7. Ana buys 6 tickets and pays with a $50 bill. How much change does "
            "she get?"
        ),
        response=(
            "6 tickets cost 6 * 7 = 48 dollars.\n"
            "Her change is 50 - 48 = 2 dollars.\n"
            "The answer is \\boxed{2}."
        ),
        opinion="incorrect",
        reason=(
            'If my teacher read this, she would ask: "Are you sure 6 * 7 is 48?" It is not, 6 * 7 = '
            "42. Subtracting the cost from 50 was the right plan; my product was wrong."
        ),
        phrase=(
            "So the tickets cost 42 dollars, and her change is 50 - 42 = 8 dollars. The answer is \\boxed{8}."
        ),
    ),
    Demonstration(
        behaviour="self-critique",
        question=(
            "A garden has 4 rows with 9 tomato plants in each row. Each plant gives 3 tomatoes. How many "
            "tomatoes does the garden give?"
        ),
        response="The numbers are 4, 9 and 3, so I multiply them all: 108.\nThe answer is \\boxed{108}.",
        opinion="correct",
        reason=(
            "My answer is right, but I was careless: I multiplied every number without saying why, and I "
            "never checked the product."
        ),
        phrase=(
            "Properly: 4 rows * 9 plants = 36 plants, and 36 * 3 = 108 tomatoes. Another way: each row "
            "gives 9 * 3 = 27, and 4 * 27 = 108. The answer is \\boxed{108}."
        ),
    ),
)


@dataclass(frozen=True)
class Feedback:
    """Parsed teacher output. `reason` and `phrase` are stripped; `phrase` holds a balanced \\boxed{}."""

    opinion: str
    reason: str
    phrase: str


# One tag token: an opening or closing tag of the three names. Tag names are matched case-insensitively
# (small models sometimes capitalise them); no spaces inside the angle brackets. The pattern has no
# nested quantifiers, so scanning is linear in the input length.
_TAG_RE = re.compile(r"<(/?)(opinion|reason|phrase)>", re.IGNORECASE)

# The exact sequence of tag tokens that makes one triple: (is_closing, name).
_TRIPLE = (
    (False, "opinion"),
    (True, "opinion"),
    (False, "reason"),
    (True, "reason"),
    (False, "phrase"),
    (True, "phrase"),
)

_BOXED = "\\boxed{"


def _has_tag(text: str) -> bool:
    return _TAG_RE.search(text) is not None


def _last_boxed_is_balanced(text: str) -> bool:
    """Whether the last `\\boxed{` in `text` closes with balanced braces around a non-empty answer.

    Only the last one matters because the reward reads the last \\boxed{} of the trajectory; checking a
    single occurrence also keeps the scan linear.
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return False
    depth = 1
    i = start + len(_BOXED)
    begin = i
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip() != ""
        i += 1
    return False


def _normalise_opinion(raw: str) -> str | None:
    """Map the opinion text to one of OPINIONS, or None.

    Accepted: any letter case, surrounding whitespace, and trailing full stops ("Correct." is common
    from chat models). Anything else ("mostly correct", "yes") is rejected rather than guessed at.
    """
    value = raw.strip().rstrip(".").strip().lower()
    return value if value in OPINIONS else None


def parse_feedback(text: str) -> Feedback | None:
    """Parse teacher output into Feedback, or None when it holds no well-formed triple ("no feedback").

    A triple is `<opinion>..</opinion>`, `<reason>..</reason>`, `<phrase>..</phrase>` in that order, with
    only whitespace between the three parts and no other opinion/reason/phrase tag inside any part
    (so nested or duplicated tags inside a triple disqualify it). Text before and after is ignored. When
    several triples are present, the LAST well-formed one wins: a model that drafts and then restates its
    feedback means the restatement. The reason must be non-empty and the phrase must end its last
    \\boxed{...} with balanced braces around a non-empty answer; otherwise the triple is not well-formed.

    Never raises on a str, and runs in time linear in len(text): one regex pass collects tag positions,
    then each candidate window of six consecutive tags is checked once.
    """
    if not isinstance(text, str):
        return None
    tags = [(m.start(), m.end(), m.group(1) == "/", m.group(2).lower()) for m in _TAG_RE.finditer(text)]
    for first in range(len(tags) - len(_TRIPLE), -1, -1):
        window = tags[first : first + len(_TRIPLE)]
        if any((closing, name) != want for (_, _, closing, name), want in zip(window, _TRIPLE, strict=True)):
            continue
        starts = [tag[0] for tag in window]
        ends = [tag[1] for tag in window]
        o_end, o_close, oc_end = ends[0], starts[1], ends[1]
        r_start, r_end, r_close, rc_end = starts[2], ends[2], starts[3], ends[3]
        p_start, p_end, p_close = starts[4], ends[4], starts[5]
        # Gaps between the parts must be blank: stray text there means the output is garbled.
        if text[oc_end:r_start].strip() or text[rc_end:p_start].strip():
            continue
        opinion = _normalise_opinion(text[o_end:o_close])
        reason = text[r_end:r_close].strip()
        phrase = text[p_end:p_close].strip()
        if opinion is None or not reason or not _last_boxed_is_balanced(phrase):
            continue
        return Feedback(opinion=opinion, reason=reason, phrase=phrase)
    return None


def render_tags(opinion: str, reason: str, phrase: str) -> str:
    """The one layout of the three tagged parts: what every teacher backend's raw output looks like, what the
    demonstrations show, and what :func:`parse_feedback` reads."""
    return f"<opinion>{opinion}</opinion>\n<reason>{reason}</reason>\n<phrase>{phrase}</phrase>"


CLOSING = "The final answer is \\boxed{"
"""The closing sentence a teacher's phrase is completed with when it states no final answer of its own."""


def has_final_answer(phrase: str) -> bool:
    """Whether a phrase already ends its answer in a well-formed ``\\boxed{}`` (checked by the parser)."""
    return parse_feedback(render_tags("correct", "x", phrase)) is not None


def chat_prefix(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat-formatted prompt text, ending where the assistant's turn begins."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_feedback(opinion: str, reason: str, phrase: str) -> str:
    """Render the three parts as the tagged text the teacher is taught to write.

    Raises ValueError when the result would not parse back to the same fields, so a malformed
    demonstration (or any other rendered feedback) fails loudly instead of silently teaching bad format.
    """
    if opinion not in OPINIONS:
        raise ValueError(f"opinion must be one of {OPINIONS}, got {opinion!r}")
    reason, phrase = reason.strip(), phrase.strip()
    text = render_tags(opinion, reason, phrase)
    if _has_tag(reason) or _has_tag(phrase) or parse_feedback(text) != Feedback(opinion, reason, phrase):
        raise ValueError(
            "reason and phrase must be non-empty, free of opinion/reason/phrase tags, and the phrase must "
            "end its answer in a balanced \\boxed{...}"
        )
    return text


def user_message(
    question: str, response: str, reference: str | None = None, reference_kind: str = "answer"
) -> str:
    """What the teacher is shown for one case: the question and the student's whole response.

    The method keeps the reference away from the teacher. Passing `reference` is a labelled deviation
    for tiny CPU teachers that cannot judge on their own; it is shown as "Reference answer:" or
    "Reference solution:" with a note not to mention it, so the feedback still reads as the student's
    own thought rather than as copying a key.
    """
    if reference_kind not in REFERENCE_KINDS:
        raise ValueError(f"reference_kind must be one of {REFERENCE_KINDS}, got {reference_kind!r}")
    parts = [f"Question:\n{question.strip()}", f"Student's response:\n{response.strip()}"]
    if reference is not None:
        parts.append(
            f"Reference {reference_kind}: {reference.strip()}\n"
            "(Only you can see the reference. Do not mention it in the feedback.)"
        )
    return "\n\n".join(parts)


def build_messages(
    question: str, response: str, reference: str | None = None, reference_kind: str = "answer"
) -> list[dict[str, str]]:
    """Chat messages for the teacher: system, four demonstration turn pairs, then the case to judge.

    Demonstrations never carry a reference, so the prompt prefix is identical across cases (cacheable)
    and the teacher learns the format from examples that judge without a key.
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for demo in DEMONSTRATIONS:
        messages.append({"role": "user", "content": user_message(demo.question, demo.response)})
        messages.append(
            {"role": "assistant", "content": render_feedback(demo.opinion, demo.reason, demo.phrase)}
        )
    messages.append({"role": "user", "content": user_message(question, response, reference, reference_kind)})
    return messages


def feedback_text(feedback: Feedback, continuation: str = "teacher") -> str:
    """The text spliced after the student's response (its end-of-turn removed).

    "teacher" (the method): blank line, reason, blank line, phrase; the phrase carries the final answer.
    "student": blank line, reason, blank line; the student then writes the rest of the solution itself.
    """
    if continuation == "teacher":
        return f"\n\n{feedback.reason}\n\n{feedback.phrase}"
    if continuation == "student":
        return f"\n\n{feedback.reason}\n\n"
    raise ValueError(f"continuation must be 'teacher' or 'student', got {continuation!r}")
