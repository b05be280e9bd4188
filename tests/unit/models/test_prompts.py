"""The VQA prompt is one fact: the server's default, training targets and evaluation all write it alike."""

from __future__ import annotations

from xmodal.app.settings import Settings
from xmodal.models.prompts import DEFAULT_VQA_PROMPT, vqa_prompt, vqa_text


def test_training_targets_continue_the_served_prompt():
    assert vqa_prompt("what colour is the circle?") == "question: what colour is the circle? answer:"
    assert vqa_text("what colour is the circle?", "red") == "question: what colour is the circle? answer: red"
    assert vqa_text("how many?", "") == vqa_prompt("how many?")  # what the decoder is prompted with
    assert Settings().vqa_prompt == DEFAULT_VQA_PROMPT
