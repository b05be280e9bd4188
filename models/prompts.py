"""The text around a VQA question, written once: the served prompt's default and the training targets.

A CoCa model answers by continuing "question: {question} answer:"; it learnt that from targets written
by `vqa_text`, so the server's default prompt, world evaluation and training must agree on it.
"""

from __future__ import annotations

DEFAULT_VQA_PROMPT = "question: {question} answer:"


def vqa_prompt(question: str, template: str = DEFAULT_VQA_PROMPT) -> str:
    """The decoder prompt for a question: the text the answer continues."""
    return template.format(question=question)


def vqa_text(question: str, answer: str, template: str = DEFAULT_VQA_PROMPT) -> str:
    """How a question/answer pair is written as a decoder target: the prompt, then the answer (after a space,
    unless the prompt ends in full-width punctuation, as "回答：" does: Chinese puts none there)."""
    prompt = vqa_prompt(question, template)
    space = "" if prompt.endswith(("：", "？")) else " "
    return f"{prompt}{space}{answer}".rstrip()
