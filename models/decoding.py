"""Caption and VQA decoding for open_clip CoCa models, without transformers.

open_clip 3.3's `CoCa.generate` needs transformers classes that 5.x removed, drops the
text prefix under beam search and re-runs the whole sequence for every new token.
Here CoCa's text forward is re-implemented with a key/value cache (each step feeds one
token), and greedy, beam and sampling searches run on top of it. `use_cache=False`
runs the same searches through open_clip's own `CoCa.forward` instead: that path is
the reference the cached one is tested against, token for token.

Images come in already preprocessed, as (B, 3, H, W) tensors. Every sequence starts
with the tokenizer's start-of-text token followed by the prefix, and all of it
(prompt plus generated tokens) fits in the model's context length, which is also the
longest sequence CoCa saw in training. So by default (max_new_tokens=None) a sequence
runs until end-of-text or until the context is full: no fixed cap can cut a caption
the model was trained to write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import Tensor, nn

from xmodal.models.attention import cross_attention_block, cross_keys_values, self_attention_block
from xmodal.models.int8 import FLOAT_PRODUCTS, Int8Products

if TYPE_CHECKING:
    from open_clip.coca_model import CoCa
    from open_clip.transformer import MultimodalTransformer, ResidualAttentionBlock, TextTransformer

DecodeMode = Literal["greedy", "beam", "sample"]
DECODE_MODES: tuple[str, ...] = ("greedy", "beam", "sample")


class TextTokenizer(Protocol):
    """What decoding needs from a tokenizer; open_clip's SimpleTokenizer fits."""

    sot_token_id: int
    eot_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How to decode. Options that only one mode reads are refused in the others.

    Scores use the model's distribution after the repetition penalty and the
    min-length end-of-text ban, but before temperature, top-k and top-p.
    """

    mode: DecodeMode = "greedy"
    max_new_tokens: int | None = None  # None: until end-of-text, within the room the context leaves after the prompt
    min_new_tokens: int = 0
    num_beams: int = 1  # beam only
    length_penalty: float = 1.0  # score = sum of log-probs / scored_tokens ** length_penalty
    top_k: int = 0  # sample only; 0 keeps the whole vocabulary
    top_p: float = 1.0  # sample only; 1.0 keeps the whole vocabulary
    temperature: float = 1.0  # sample only
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prefix or output
    num_return_sequences: int = 1  # beam: the best n beams; sample: n samples
    prefix: str = ""  # the prompt; the generated text continues it and excludes it
    seed: int | None = None  # sample only; None draws from torch's global generator

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise ValueError(f"mode must be one of {DECODE_MODES}, got {self.mode!r}")
        for name in ("max_new_tokens", "min_new_tokens", "num_beams", "top_k", "num_return_sequences"):
            value = getattr(self, name)
            if name == "max_new_tokens" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or None: until end-of-text), got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.mode != "beam" and self.num_beams != 1:
            raise ValueError(f"num_beams applies only to mode='beam' (mode is {self.mode!r})")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.mode == "greedy" and self.num_return_sequences != 1:
            raise ValueError("greedy decoding returns one sequence; use mode='beam' or 'sample' for more")
        if self.mode == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        if self.mode != "sample" and (self.top_k != 0 or self.top_p != 1.0 or self.temperature != 1.0):
            raise ValueError(f"top_k, top_p and temperature apply only to mode='sample' (mode is {self.mode!r})")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be a positive finite number, got {self.repetition_penalty}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be finite, got {self.length_penalty}")
        if not isinstance(self.prefix, str):
            raise ValueError(f"prefix must be a str, got {type(self.prefix).__name__}")


@dataclass(frozen=True)
class Candidate:
    """One decoded continuation of the prompt."""

    text: str
    token_ids: tuple[int, ...]  # generated tokens only: no start, prefix or end-of-text token
    score: float  # log-probability sum / scored_tokens ** length_penalty (end-of-text counts)
    finished: bool  # True when it ended with end-of-text, False when it ran out of tokens


def is_captioner(model: nn.Module) -> bool:
    """True for open_clip CoCa models, the ones with a text decoder."""
    from open_clip.coca_model import CoCa

    return isinstance(model, CoCa) and getattr(model, "text_decoder", None) is not None


class CocaDecoder:
    """Captions and answer ranking for one open_clip CoCa model and its tokenizer.

    Puts the model in eval mode. Runs in the dtype and on the device of its parameters.

    int8=True (fp32 models on the CPU only): the cached path's matrix products read int8 copies
    of the text tower's and decoder's weights (symmetric, per output channel; activations are
    quantized per call), about 4x fewer bytes per token. Results move within a tolerance of fp32
    that bench/bench_caption.py --int8 measures; use_cache=False stays the fp32 reference.
    """

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, *, int8: bool = False):
        if not is_captioner(model):
            raise ValueError(f"{type(model).__name__} is not a CoCa model with a text decoder")
        self.model: CoCa = model.eval()
        self.tokenizer = tokenizer
        self.int8 = int8
        self._cached = _CachedCoca(model, int8=int8)

    @property
    def device(self) -> torch.device:
        return self.model.text_decoder.text_projection.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.text_decoder.text_projection.dtype

    @property
    def context_length(self) -> int:
        """Most tokens a sequence may hold, start token and prefix included."""
        return self._cached.capacity

    @torch.inference_mode()
    def generate(
        self, images: Tensor, options: DecodeOptions = DecodeOptions(), *, use_cache: bool = True
    ) -> list[list[Candidate]]:
        """Per image, `options.num_return_sequences` candidates, best score first.

        use_cache=False re-runs open_clip's full forward at every step: slow, for tests and benchmarks.
        """
        images = self._check_images(images)
        if images.shape[0] == 0:
            return []
        prompt_ids = self._prompt_ids(options.prefix)
        max_new = self._room_for(prompt_ids, options)
        image_latent, image_embs = self.model._encode_image(images)
        prompt = torch.tensor(prompt_ids, device=self.device).repeat(images.shape[0], 1)
        steps: _Steps = _CachedSteps(self._cached, image_embs)
        if not use_cache:
            steps = _ReferenceSteps(self.model, image_latent, image_embs)
        eot = self.tokenizer.eot_token_id
        if options.mode == "beam":
            hypotheses = _beam_search(steps, prompt, options, max_new, eot)
        else:
            generator = None
            if options.mode == "sample" and options.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(options.seed)
            hypotheses = _greedy_or_sample(steps, prompt, options, max_new, eot, generator)
        return [[self._candidate(h, options.length_penalty) for h in per_image] for per_image in hypotheses]

    @torch.inference_mode()
    def score_answers(
        self, images: Tensor, prompts: Sequence[str], answers: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """For image i, the mean log-probability of each answers[i] after prompts[i].

        An answer's tokens and the end-of-text after them are scored, so a correct answer
        that should go on ("red" when the text is "red circle") is not rewarded. Prompt and
        answer are tokenised separately, as if joined by a space.
        """
        images = self._check_images(images)
        if len(prompts) != images.shape[0] or len(answers) != images.shape[0]:
            raise ValueError(
                f"need one prompt and one answer list per image: {images.shape[0]} images, "
                f"{len(prompts)} prompts, {len(answers)} answer lists"
            )
        _, image_embs = self.model._encode_image(images)
        return [
            self._scores(image_embs[i : i + 1], prompt, image_answers)[0].tolist()
            for i, (prompt, image_answers) in enumerate(zip(prompts, answers))
        ]

    @torch.inference_mode()
    def image_tokens(self, images: Tensor) -> Tensor:
        """The image tokens the decoder attends to, (B, tokens, width): encode once, score many prompts."""
        return self.model._encode_image(self._check_images(images))[1]

    @torch.inference_mode()
    def score_prompt_answers(self, image_tokens: Tensor, prompt: str, answers: Sequence[str]) -> Tensor:
        """(B, answers): for every image (its `image_tokens`), the mean log-probability of each answer after the
        one shared prompt, scored as score_answers scores them, in one batched pass."""
        return self._scores(image_tokens, prompt, answers)

    def _scores(self, image_embs: Tensor, prompt: str, answers: Sequence[str]) -> Tensor:
        if isinstance(answers, str) or len(answers) == 0:
            raise ValueError(f"answers for an image must be a non-empty list of strings, got {answers!r}")
        prompt_ids = [self.tokenizer.sot_token_id, *self.tokenizer.encode(prompt)]
        targets = [[*self.tokenizer.encode(answer), self.tokenizer.eot_token_id] for answer in answers]
        for answer, target in zip(answers, targets):
            if len(target) == 1:
                raise ValueError(f"answer {answer!r} has no tokens")
            if len(prompt_ids) + len(target) > self.context_length:
                raise ValueError(
                    f"prompt and answer {answer!r} take {len(prompt_ids) + len(target)} tokens, "
                    f"more than the context length {self.context_length}"
                )
        images, count = image_embs.shape[0], len(targets)
        lengths = torch.tensor([len(t) for t in targets], device=self.device)
        # Shorter answers are padded with end-of-text: causal attention keeps the padding
        # out of the positions that are scored.
        padded = torch.full((count, int(lengths.max())), self.tokenizer.eot_token_id, device=self.device)
        for row, ids in enumerate(targets):
            padded[row, : len(ids)] = torch.tensor(ids, device=self.device)

        # One row per image for the prompt, then one per (image, answer), grouped by image.
        state = self._cached.new_state(image_embs)
        prompt_tokens = torch.tensor([prompt_ids], device=self.device).expand(images, -1)
        prompt_logits = self._cached.forward(state, prompt_tokens)
        logits = prompt_logits.repeat_interleave(count, dim=0)
        rows = padded.repeat(images, 1)
        if padded.shape[1] > 1:
            state.select_rows(torch.arange(images, device=self.device).repeat_interleave(count))
            answer_logits = self._cached.forward(state, rows[:, :-1], all_positions=True)
            logits = torch.cat([logits, answer_logits], dim=1)
        logprobs = logits.float().log_softmax(-1).gather(2, rows.unsqueeze(-1)).squeeze(-1)
        lengths = lengths.repeat(images)
        scored = torch.arange(rows.shape[1], device=self.device) < lengths.unsqueeze(1)
        return (logprobs.masked_fill(~scored, 0.0).sum(1) / lengths).view(images, count)

    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a preprocessed (B, 3, H, W) tensor, got {shape}")
        return images.to(device=self.device, dtype=self.dtype)

    def new_token_limit(self, options: DecodeOptions) -> int:
        """The most tokens `generate` may add after options.prefix: options.max_new_tokens, or with None
        every position the context leaves after the start token and the prefix (end-of-text included)."""
        return self._room_for(self._prompt_ids(options.prefix), options)

    def _prompt_ids(self, prefix: str) -> list[int]:
        return [self.tokenizer.sot_token_id, *self.tokenizer.encode(prefix)]

    def _room_for(self, prompt_ids: list[int], options: DecodeOptions) -> int:
        room = self.context_length - len(prompt_ids)
        if room < max(1, options.min_new_tokens):
            raise ValueError(
                f"the prompt takes {len(prompt_ids)} of {self.context_length} context tokens, leaving "
                f"{max(room, 0)} for new tokens; min_new_tokens is {options.min_new_tokens}"
            )
        return room if options.max_new_tokens is None else min(options.max_new_tokens, room)

    def _candidate(self, hypothesis: _Hypothesis, length_penalty: float) -> Candidate:
        return Candidate(
            text=self._decode_text(hypothesis.token_ids),
            token_ids=tuple(hypothesis.token_ids),
            score=hypothesis.score(length_penalty),
            finished=hypothesis.finished,
        )

    def _decode_text(self, token_ids: Sequence[int]) -> str:
        special = {self.tokenizer.sot_token_id, self.tokenizer.eot_token_id}
        text = self.tokenizer.decode([t for t in token_ids if t not in special])
        return " ".join(text.split())


def _select_cached(kv: Tensor, source: Tensor, length: int) -> Tensor:
    """Row i of the result is row source[i] of kv (layers, 2, rows, heads, capacity, head_width).

    Only the first `length` positions are filled, so only those are copied.
    """
    selected = kv.new_empty((*kv.shape[:2], len(source), *kv.shape[3:]))
    selected[:, :, :, :, :length] = kv[:, :, source, :, :length]
    return selected


@dataclass
class _DecodeState:
    """Everything cached for a batch of sequences. Rows are grouped by image, the same number per image."""

    image_keys_values: list[tuple[Tensor, Tensor]]  # per decoder layer, (images, heads, image_tokens, head_width)
    text_kv: Tensor  # (layers, 2, rows, heads, capacity, head_width)
    decoder_kv: Tensor
    tokens: Tensor  # (rows, capacity) token ids fed so far, for the text tower's padding mask
    length: int = 0

    def select_rows(self, source: Tensor) -> None:
        """Continue row source[i] as row i: reorders beams, or fans one prompt out to several rows."""
        images = self.image_keys_values[0][0].shape[0]
        if len(source) % images:
            raise ValueError(f"{len(source)} rows cannot be split evenly over {images} images")
        self.text_kv = _select_cached(self.text_kv, source, self.length)
        self.decoder_kv = _select_cached(self.decoder_kv, source, self.length)
        self.tokens = self.tokens[source]


class _CachedCoca:
    """CoCa's text tower and text decoder, one step at a time, mirroring open_clip's forward."""

    def __init__(self, model: CoCa, *, int8: bool = False):
        self.text: TextTransformer = model.text
        self.decoder: MultimodalTransformer = model.text_decoder
        _check_supported(self.text, self.decoder)
        self.products = Int8Products(self.text, self.decoder) if int8 else FLOAT_PRODUCTS
        self.capacity = min(self.text.context_length, self.decoder.context_length)
        # open_clip masks padding (pad_id) keys in the text tower whenever a CLS token is appended.
        # Its default (legacy) CoCa mask is shifted one place: key t is dropped when token t-1 is padding.
        self.pad_id = getattr(self.text, "pad_id", 0)
        self.pad_masked = getattr(self.text, "use_pad_mask", False) or self.text.cls_emb is not None
        self.pad_mask_shifted = self.text.cls_emb is not None and not getattr(self.text, "correct_cls_mask", False)

    def new_state(self, image_embs: Tensor) -> _DecodeState:
        """An empty cache with one row per image."""
        images = image_embs.shape[0]
        return _DecodeState(
            image_keys_values=[cross_keys_values(block, image_embs) for block in self.decoder.cross_attn],
            text_kv=self._empty_kv(self.text.transformer.resblocks, images, image_embs),
            decoder_kv=self._empty_kv(self.decoder.resblocks, images, image_embs),
            tokens=torch.full((images, self.capacity), self.pad_id, device=image_embs.device),
        )

    def _empty_kv(self, blocks: Sequence[ResidualAttentionBlock], rows: int, like: Tensor) -> Tensor:
        attn = blocks[0].attn
        shape = (len(blocks), 2, rows, attn.num_heads, self.capacity, attn.head_dim)
        return torch.empty(shape, device=like.device, dtype=attn.in_proj_weight.dtype)

    def forward(self, state: _DecodeState, tokens: Tensor, *, all_positions: bool = False) -> Tensor:
        """Feed tokens (rows, n) after those already cached; next-token logits for the last position, or all n."""
        start, end = state.length, state.length + tokens.shape[1]
        if end > self.capacity:
            raise ValueError(f"sequence of {end} tokens exceeds the context length {self.capacity}")
        state.tokens[:, start:end] = tokens
        cast_dtype = self.text.transformer.get_cast_dtype()
        x = self.text.token_embedding(tokens).to(cast_dtype)
        x = x + self.text.positional_embedding[start:end].to(cast_dtype)

        positions = torch.arange(end, device=tokens.device)
        causal = positions.unsqueeze(0) <= positions[start:end].unsqueeze(1)  # (new, all) True = may attend
        text_mask = causal
        if self.pad_masked:
            text_mask = causal & self._unpadded_keys(state.tokens[:, :end])[:, None, None, :]
        for layer, block in enumerate(self.text.transformer.resblocks):
            x = self_attention_block(block, x, state.text_kv[layer], start, text_mask, self.products)
        if self.text.cls_emb is None:
            x = self.text.ln_final(x)  # without CLS open_clip normalises the tokens it hands the decoder

        decoder_mask = causal if tokens.shape[1] > 1 else None
        layers = zip(self.decoder.resblocks, self.decoder.cross_attn, state.image_keys_values)
        for layer, (self_block, cross_block, (keys, values)) in enumerate(layers):
            x = self_attention_block(self_block, x, state.decoder_kv[layer], start, decoder_mask, self.products)
            x = cross_attention_block(cross_block, x, keys, values, self.products)
        state.length = end

        if not all_positions:
            x = x[:, -1:]
        return self.products.vocab(self.decoder, self.decoder.ln_final(x))

    def _unpadded_keys(self, tokens: Tensor) -> Tensor:
        unpadded = tokens != self.pad_id
        if self.pad_mask_shifted:
            first = torch.ones_like(unpadded[:, :1])
            unpadded = torch.cat([first, unpadded[:, :-1]], dim=1)
        return unpadded


def _check_supported(text: TextTransformer, decoder: MultimodalTransformer) -> None:
    """The cached forward mirrors open_clip's default blocks only; refuse anything else up front."""
    if not hasattr(text, "token_embedding"):
        raise ValueError("only open_clip's own TextTransformer can be decoded (not HF text towers)")
    if text.attn_mask is None:
        raise ValueError("the text tower is bidirectional (no causal mask), so it cannot decode")
    if not (text.transformer.batch_first and decoder.batch_first):
        raise ValueError("only batch-first transformers are supported")
    for block in [*text.transformer.resblocks, *decoder.resblocks, *decoder.cross_attn]:
        attn = getattr(block, "attn", None)
        plain = (
            isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first
            and attn._qkv_same_embed_dim
            and attn.bias_k is None
            and not attn.add_zero_attn
        )
        if not plain:
            raise ValueError(f"unsupported attention block {type(block).__name__} for cached decoding")


# ---------------------------------------------------------------- next-token logits


class _CachedSteps:
    """Next-token logits from the key/value cache: each step feeds only the newest token."""

    def __init__(self, cached: _CachedCoca, image_embs: Tensor):
        self.cached, self.image_embs = cached, image_embs

    def start(self, prompt: Tensor) -> Tensor:
        self.state = self.cached.new_state(self.image_embs)
        return self.cached.forward(self.state, prompt)[:, -1]

    def advance(self, source: Tensor | None, history: Tensor) -> Tensor:
        if source is not None:
            self.state.select_rows(source)
        return self.cached.forward(self.state, history[:, -1:])[:, -1]


class _ReferenceSteps:
    """Next-token logits from open_clip's own CoCa.forward over the whole sequence at every step."""

    def __init__(self, model: CoCa, image_latent: Tensor, image_embs: Tensor):
        self.model, self.image_latent, self.image_embs = model, image_latent, image_embs

    def start(self, prompt: Tensor) -> Tensor:
        return self._logits(prompt)

    def advance(self, source: Tensor | None, history: Tensor) -> Tensor:
        return self._logits(history)

    def _logits(self, history: Tensor) -> Tensor:
        images = self.image_embs.shape[0]
        image_of_row = torch.arange(images, device=history.device).repeat_interleave(history.shape[0] // images)
        out = self.model(
            None,
            history,
            image_latent=self.image_latent[image_of_row],
            image_embs=self.image_embs[image_of_row],
            output_labels=False,
        )
        return out["logits"][:, -1]


class _Steps(Protocol):
    def start(self, prompt: Tensor) -> Tensor: ...

    def advance(self, source: Tensor | None, history: Tensor) -> Tensor: ...


# ---------------------------------------------------------------- searches


@dataclass
class _Hypothesis:
    token_ids: list[int]  # generated tokens, without end-of-text
    logprob_sum: float
    finished: bool

    def score(self, length_penalty: float) -> float:
        scored_tokens = len(self.token_ids) + int(self.finished)
        return self.logprob_sum / scored_tokens**length_penalty


def _adjusted_logits(logits: Tensor, history: Tensor, generated: int, options: DecodeOptions, eot: int) -> Tensor:
    """The distribution every mode scores with: repetition penalty, then the min-length end-of-text ban."""
    logits = logits.float().clone()
    if options.repetition_penalty != 1.0 and history.shape[1] > 1:
        seen = history[:, 1:]  # the start token is not text
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / options.repetition_penalty, picked * options.repetition_penalty)
        logits.scatter_(1, seen, picked)
    if generated < options.min_new_tokens:
        logits[:, eot] = float("-inf")
    return logits


def _sample(logits: Tensor, options: DecodeOptions, generator: torch.Generator | None) -> Tensor:
    logits = logits / options.temperature
    if options.top_k:
        kth_best = logits.topk(min(options.top_k, logits.shape[1]), dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        probs = sorted_logits.softmax(dim=1)
        # Drop a token once the more likely ones already hold top_p of the mass; the best always stays.
        drop_sorted = probs.cumsum(dim=1) - probs >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)


def _greedy_or_sample(
    steps: _Steps,
    prompt: Tensor,
    options: DecodeOptions,
    max_new: int,
    eot: int,
    generator: torch.Generator | None,
) -> list[list[_Hypothesis]]:
    images, prompt_length = prompt.shape
    logits, history, source = steps.start(prompt), prompt, None
    per_image = options.num_return_sequences
    if per_image > 1:
        # The prompt is run once per image, then fanned out to the samples.
        source = torch.arange(images, device=prompt.device).repeat_interleave(per_image)
        logits, history = logits[source], prompt[source]
    logprob_sums = torch.zeros(history.shape[0], device=prompt.device)
    done = torch.zeros(history.shape[0], dtype=torch.bool, device=prompt.device)
    for generated in range(max_new):
        logits = _adjusted_logits(logits, history, generated, options, eot)
        tokens = logits.argmax(dim=1) if options.mode == "greedy" else _sample(logits, options, generator)
        tokens = tokens.masked_fill(done, eot)  # finished rows just pad with end-of-text
        logprobs = logits.log_softmax(dim=1).gather(1, tokens.unsqueeze(1)).squeeze(1)
        logprob_sums += logprobs.masked_fill(done, 0.0)
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
        done |= tokens == eot
        if generated + 1 == max_new or bool(done.all()):
            break
        logits, source = steps.advance(source, history), None

    hypotheses = []
    for ids, logprob_sum in zip(history[:, prompt_length:].tolist(), logprob_sums.tolist()):
        finished = eot in ids
        hypotheses.append(_Hypothesis(ids[: ids.index(eot)] if finished else ids, logprob_sum, finished))
    per_image_hypotheses = [hypotheses[i : i + per_image] for i in range(0, len(hypotheses), per_image)]
    return [sorted(h, key=lambda h: h.score(options.length_penalty), reverse=True) for h in per_image_hypotheses]


def _keep_best(kept: list[_Hypothesis], new: _Hypothesis, limit: int, length_penalty: float) -> None:
    kept.append(new)
    kept.sort(key=lambda h: h.score(length_penalty), reverse=True)
    del kept[limit:]


def _beam_search(
    steps: _Steps, prompt: Tensor, options: DecodeOptions, max_new: int, eot: int
) -> list[list[_Hypothesis]]:
    """Beam search with length-normalised scores; an image stops once no live beam can beat its finished ones."""
    images, prompt_length = prompt.shape
    beams, length_penalty = options.num_beams, options.length_penalty
    device = prompt.device
    logits, history = steps.start(prompt), prompt
    beam_sums = torch.zeros(images, 1, device=device)  # (images, live beams); one beam until the first step
    finished: list[list[_Hypothesis]] = [[] for _ in range(images)]
    done = [False] * images
    for generated in range(max_new):
        live_per_image = beam_sums.shape[1]
        logprobs = _adjusted_logits(logits, history, generated, options, eot).log_softmax(dim=1)
        vocab = logprobs.shape[1]
        totals = (beam_sums.reshape(-1, 1) + logprobs).view(images, live_per_image * vocab)
        # 2 * beams candidates leave `beams` that are not end-of-text even if every beam ends.
        top_totals, top_index = totals.topk(2 * beams, dim=1)
        first_row = torch.arange(images, device=device).unsqueeze(1) * live_per_image
        top_rows, top_tokens = (first_row + top_index // vocab).tolist(), (top_index % vocab).tolist()
        best_totals, generated_ids = top_totals.tolist(), history[:, prompt_length:].tolist()
        last_step = generated + 1 == max_new

        next_beams: list[tuple[float, int, int]] = []  # (log-prob sum, source row, token)
        for image in range(images):
            if done[image]:
                next_beams += [(float("-inf"), image * live_per_image, eot)] * beams  # placeholders
                continue
            live: list[tuple[float, int, int]] = []  # (log-prob sum, source row, token)
            for rank, (total, row, token) in enumerate(zip(best_totals[image], top_rows[image], top_tokens[image])):
                if token == eot:
                    if rank < beams:  # an ending only counts if it ranks among the beams
                        hypothesis = _Hypothesis(generated_ids[row], total, finished=True)
                        _keep_best(finished[image], hypothesis, beams, length_penalty)
                elif len(live) < beams:
                    live.append((total, row, token))
            if last_step:
                for total, row, token in live:
                    hypothesis = _Hypothesis([*generated_ids[row], token], total, finished=False)
                    _keep_best(finished[image], hypothesis, beams, length_penalty)
            best_live_score = live[0][0] / (generated + 1) ** length_penalty
            kept = finished[image]
            done[image] = last_step or (len(kept) == beams and kept[-1].score(length_penalty) >= best_live_score)
            next_beams += live

        if all(done):
            break
        sums, rows, tokens = zip(*next_beams)
        source = torch.tensor(rows, device=device)
        history = torch.cat([history[source], torch.tensor(tokens, device=device).unsqueeze(1)], dim=1)
        beam_sums = torch.tensor(sums, device=device).view(images, beams)
        logits = steps.advance(source, history)
    return [kept[: options.num_return_sequences] for kept in finished]
