"""Training losses: open_clip's CoCaLoss (contrastive + captioning), or ClipLoss alone.

On world data two more terms can join: each image ranking the batch's partial queries (a third
contrastive softmax), and a where-to-look loss that teaches the decoder's first cross-attention head
which image patches a question's answer is in. The world knows both; without the second the decoder
found the object a question names only after a plateau of varying length (training-recipes.md).

A small CoCa's training step on a CPU goes to its text tower and decoder, and to anything
vocabulary-sized (49,408 rows). Four savings, none of which changes the loss value:
- texts run through the text tower and the decoder in groups of similar length, each group cut
  after its longest text: every row is computed on its own (attention is causal, nothing mixes
  rows), so a 5-token query no longer costs as much as a 27-token caption. Contrastive texts are
  cut the way `models.encoders` cuts them for inference (CoCa's class token stays where it is
  after full padding). On world batches this computes 2,300 text-tower positions instead of
  4,200 and 1,100 decoder positions instead of 1,600;
- only non-padding positions are projected (padding is ignored by the loss anyway);
- columns of the projection that are all zero give logit 0, so tokens whose column is zero
  and which are not a target in this batch are folded into one logit, log(count), instead of
  one column each. The difference from full-vocabulary training is that those columns get no
  gradient (full training would push them slightly negative) and stay zero until their token
  first appears as a target;
- with `sparse_gradients`, the token embedding and the projection get sparse gradients (only
  the rows and columns of the batch's tokens) instead of dense 49,408 x width tensors, whose
  zero-filling alone cost a sixth of a step once every length group added one.
Only the zero-column shortcut changes any gradient; tests/unit/models/test_training.py checks the
loss against open_clip's CoCa forward and CoCaLoss, and the gradients against full padding.
A model trained from scratch starts with an all-zero projection (starting_model.py), so only
tokens that ever occur in a decoder target get a column. A pretrained CoCa has no zero
columns and gets the full vocabulary.
"""

from __future__ import annotations

import functools
import logging
import math

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import MultimodalTransformer
from torch import nn

from xmodal.models.encoders import can_trim_padding, encode_text_trimmed
from xmodal.models.world.scene import POSITION_CENTRES, POSITIONS

logger = logging.getLogger(__name__)
PAD_ID = 0  # open_clip's SimpleTokenizer pads with 0
# The cost of one more pass through the text tower or decoder, in text positions: a length group
# must save at least this much padding. On xmodal-small-coca (batch 64, one CPU thread) 16, 64 and
# 200 were within noise of each other (3 to 8 groups).
GROUP_OVERHEAD = 64


def is_coca(model: nn.Module) -> bool:
    return isinstance(getattr(model, "text_decoder", None), MultimodalTransformer)


class Objective:
    def __init__(
        self,
        model: nn.Module,
        contrastive_weight: float,
        caption_weight: float,
        tokenizer=None,
        sparse_gradients: bool = False,
        answer_weight: float = 1.0,
        attention_weight: float = 0.0,
        query_weight: float = 0.0,
    ):
        """`tokenizer`: the model's; contrastive texts are cut to their length when `can_trim_padding`
        allows it (open_clip's own tokenizer), and run at full length otherwise. `sparse_gradients`:
        the token embedding (switched to `sparse=True`; the model's only nn.Embedding) and CoCa's
        vocabulary projection get sparse gradients, holding only the rows (columns) a batch uses;
        VocabAdamW takes them, torch's own AdamW does not. `answer_weight`: the captioning loss's
        weight on the answer tokens a call marks (`answers`), every other taught token weighing 1
        (TrainConfig.answer_loss_weight). `attention_weight`: the weight of the loss that teaches the
        decoder where to look for a question's answer (TrainConfig.attention_loss_weight). `query_weight`:
        the image → partial query term's (TrainConfig.image_to_query_weight)."""
        self.coca = is_coca(model)
        self.answer_weight = answer_weight
        if attention_weight and not decoder_sees_patches(model):
            # The recipe sets it; a model whose decoder reads pooled tokens still trains, without it.
            logger.warning("attention_loss_weight ignored: this model's decoder attends to no square grid of patches")
            attention_weight = 0.0
        self.attention_weight = attention_weight
        self.query_weight = query_weight
        self.trims_texts = tokenizer is not None and can_trim_padding(model, tokenizer)
        self.sparse_gradients = sparse_gradients
        if sparse_gradients:
            embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
            if len(embeddings) != 1:
                raise ValueError(f"sparse_gradients needs one token embedding; the model has {len(embeddings)}")
            embeddings[0].sparse = True
        if getattr(model, "logit_bias", None) is not None:
            raise NotImplementedError("SigLIP-style models (logit_bias) need SigLipLoss, which is not wired in")
        if self.coca:
            # Targets are packed (no padding), so nothing may be ignored: index 0 is a real token.
            self.loss = open_clip.CoCaLoss(caption_weight, contrastive_weight, pad_id=-100)
        else:
            self.loss = open_clip.ClipLoss()
            self.contrastive_weight = contrastive_weight

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        texts: torch.Tensor,
        targets: torch.Tensor,
        positives: torch.Tensor | None = None,
        complete: torch.Tensor | None = None,
        taught: torch.Tensor | None = None,
        answers: torch.Tensor | None = None,
        where: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for a batch. `texts` (contrastive) and `targets` (the decoder's, ignored by plain
        CLIP) are whole multiples of the images, image i's in consecutive rows; `positives[j, i]`
        marks text j as describing image i (None: each text describes its own image only);
        `complete` marks the texts image → text matching ranks (default: all); `taught` marks the
        target tokens the captioning loss covers (default: every non-padding one; a prompt's
        tokens are context, not taught); `answers` marks the answer tokens of question/answer
        targets, weighted by `answer_weight` in the captioning loss (a sum over taught tokens divided
        by their count); `where` (targets, examples.PLACES) marks where each question target's answer
        is, for the where-to-look loss (with `attention_weight`)."""
        if positives is None and len(texts) != len(images):
            raise ValueError("several contrastive texts per image need `positives`")
        if not self.coca:
            image_features = model.encode_image(images, normalize=True)
            text_features = F.normalize(self._text_latents(model, texts), dim=-1)
            if positives is None:
                contrastive = self.loss(image_features, text_features, model.logit_scale.exp())
            else:
                contrastive = multi_positive_clip_loss(
                    image_features, text_features, model.logit_scale.exp(), positives, complete, self.query_weight
                )
            contrastive = self.contrastive_weight * contrastive
            return {"loss": contrastive, "contrastive_loss": contrastive}

        image_latent, image_embs = model.visual(images)
        text_latent = self._text_latents(model, texts)
        per_image = len(targets) // len(images)  # several decoder texts per image share its encoding

        # Where to look: each question target with a place to look, and the position its first answer
        # token is predicted from (the token before it).
        looking = None
        if self.attention_weight and where is not None and answers is not None:
            looking = where.any(dim=1) & answers.any(dim=1)
            asked_at = answers.float().argmax(dim=1) - 1
        attention: list[torch.Tensor] = []  # per length group: the looked-at patches' attention mass

        # The text tower is causal, so cutting decoder texts after the longest of their group leaves
        # every kept position unchanged (only the unused class token moves).
        def decode(rows: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
            _, token_embs = model.text(cut)
            embs = image_embs[rows // per_image]
            if looking is None or not bool(looking[rows].any()):
                return decoder_states(model.text_decoder, embs, token_embs[:, :-1])
            assert where is not None  # `looking` is only set with it
            look = looking[rows].nonzero().squeeze(1)
            states, weights = decoder_states(model.text_decoder, embs, token_embs[:, :-1], (look, asked_at[rows][look]))
            patches = where[rows][look].float() @ position_patches(embs.shape[1]).to(weights)
            attention.append((weights[:, 0] * patches).sum(dim=1))  # the first head's mass on those patches
            return states

        weights = None
        if answers is not None and self.answer_weight != 1.0:
            weights = 1.0 + (self.answer_weight - 1.0) * answers.float()
        hidden, labels, weights = _by_length(targets, extra=0, run=decode, labels=True, taught=taught, weights=weights)
        logits, labels = _caption_logits(model.text_decoder, hidden, labels, self.sparse_gradients)
        image_features, text_features = F.normalize(image_latent, dim=-1), F.normalize(text_latent, dim=-1)
        if positives is None and weights is None:
            contrastive, caption = self.loss(
                image_features, text_features, logits.unsqueeze(0), labels.unsqueeze(0), model.logit_scale.exp()
            )
        else:
            if weights is None:
                caption = F.cross_entropy(logits, labels)
            else:
                caption = (F.cross_entropy(logits, labels, reduction="none") * weights).sum() / len(labels)
            caption = self.loss.caption_loss_weight * caption
            if positives is None:  # each text describes its own image: open_clip's ClipLoss
                positives = torch.eye(len(images), dtype=torch.bool, device=image_features.device)
            contrastive = self.loss.clip_loss_weight * multi_positive_clip_loss(
                image_features, text_features, model.logit_scale.exp(), positives, complete, self.query_weight
            )
        losses = {"loss": contrastive + caption, "contrastive_loss": contrastive, "caption_loss": caption}
        if attention:
            looked = self.attention_weight * -torch.cat(attention).clamp(min=1e-6).log().mean()
            losses.update(loss=losses["loss"] + looked, attention_loss=looked)
        return losses

    def _text_latents(self, model: nn.Module, texts: torch.Tensor) -> torch.Tensor:
        """model.encode_text(texts, normalize=False), in length groups where that is exact."""
        if self.trims_texts:  # one pad column past each group's longest text (see encode_text_trimmed)
            return _by_length(texts, 2, lambda rows, cut: encode_text_trimmed(model, cut))
        return model.encode_text(texts, normalize=False)


def multi_positive_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
    complete: torch.Tensor | None = None,
    query_weight: float = 0.0,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy when a text may describe several images of the batch.

    Each text's target is spread evenly over the images it describes (text → image). Each
    image's target is spread evenly over the complete texts describing it, and only complete
    texts compete in its softmax (image → text): a partial query ("a red shape") is a fine
    way to find an image but not the text an image should be matched with. With `positives`
    the identity and every text complete, this is open_clip's ClipLoss. A text describing no
    image (a hard negative) only appears in the image → text softmaxes. With `query_weight`, each image
    also ranks the partial queries (the texts not `complete`) in a softmax of their own, its target spread
    over those it satisfies, and that term is added with this weight (halved, as the other two are).
    """
    positives = positives.to(device=image_features.device, dtype=torch.float32)
    logits = (logit_scale * image_features @ text_features.T).float()  # (images, texts)
    # A text that describes no image (a hard negative) only competes in image → text.
    found = positives.sum(1) > 0
    text_to_image = -(positives[found] * logits.T[found].log_softmax(dim=1)).sum(1) / positives[found].sum(1)
    loss = text_to_image.mean()
    if complete is not None and not bool(complete.all()):
        keep = complete.to(image_features.device)
        if query_weight:
            loss = loss + query_weight * _image_to_texts(logits[:, ~keep], positives[~keep])
        logits, positives = logits[:, keep], positives[keep]
    return (loss + _image_to_texts(logits, positives)) / 2


def _image_to_texts(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Each image's cross-entropy over `logits`' texts, its target spread over the texts describing it
    (`positives`: texts x images); images with none are left out."""
    counts = positives.T.sum(1)
    described = counts > 0
    losses = -(positives.T[described] * logits[described].log_softmax(dim=1)).sum(1) / counts[described]
    return losses.mean()


def _caption_logits(
    decoder: MultimodalTransformer, hidden: torch.Tensor, labels: torch.Tensor, sparse_gradient: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for the decoder states of target tokens (`_by_length(..., labels=True)`), with
    labels indexing them."""
    hidden = decoder.ln_final(hidden)
    projection = decoder.text_projection
    vocab = projection.shape[1]
    with torch.no_grad():
        live = projection.detach().ne(0).any(dim=0).nonzero().squeeze(1)
        columns = torch.unique(torch.cat([live, labels]))
    selected = _SparseColumns.apply(projection, columns) if sparse_gradient else projection[:, columns]
    logits = (hidden @ selected).float()
    rest = vocab - len(columns)
    if rest:
        # The zero columns' logits are all 0: together they contribute log(rest) to the partition sum.
        logits = torch.cat([logits, logits.new_full((len(logits), 1), math.log(rest))], dim=1)
    return logits, torch.searchsorted(columns, labels)


class _SparseColumns(torch.autograd.Function):
    """`weight[:, columns]` whose gradient is a sparse tensor over those columns only."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(columns)
        ctx.weight_shape = weight.shape
        return weight.index_select(1, columns)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (columns,) = ctx.saved_tensors
        rows = torch.arange(grad.shape[0], device=grad.device).repeat_interleave(len(columns))
        indices = torch.stack([rows, columns.repeat(grad.shape[0])])
        sparse = torch.sparse_coo_tensor(indices, grad.reshape(-1), ctx.weight_shape, check_invariants=False)
        return sparse, None


def decoder_states(
    decoder: MultimodalTransformer,
    image_embs: torch.Tensor,
    text_embs: torch.Tensor,
    attention_at: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """MultimodalTransformer.forward without its final norm and vocabulary projection. With
    `attention_at` (rows, positions): also the first cross-attention's weights over the image tokens
    at those rows' positions, per head, with no gradient to the image tokens: (states, (len(rows), heads, tokens))."""
    if not decoder.batch_first:
        raise NotImplementedError("the text decoder must run batch-first")
    seq_len = text_embs.shape[1]
    x = text_embs
    weights = None
    for layer, (block, cross_attn) in enumerate(zip(decoder.resblocks, decoder.cross_attn)):
        x = block(x, attn_mask=decoder.attn_mask[:seq_len, :seq_len])
        if layer == 0 and attention_at is not None:
            rows, positions = attention_at
            # The image tokens are detached: taught through them, the where-to-look loss made the tokens
            # say where things are and lose their colours (caption exact 1.00 -> 0.03, colour 0.21).
            weights = _cross_attention_weights(cross_attn, x[rows, positions], image_embs[rows].detach())
        x = cross_attn(x, k_x=image_embs, v_x=image_embs)
    return x if attention_at is None else (x, weights)


def _cross_attention_weights(block: nn.Module, queries: torch.Tensor, image_embs: torch.Tensor) -> torch.Tensor:
    """(N, heads, image tokens): the attention `block` (a cross-attention ResidualAttentionBlock) gives
    each of the N query states over its image's tokens, as its forward computes it."""
    keys = block.ln_1_kv(image_embs)
    _, weights = block.attn(block.ln_1(queries).unsqueeze(1), keys, keys, need_weights=True, average_attn_weights=False)
    return weights[:, :, 0]


def decoder_sees_patches(model: nn.Module) -> bool:
    """Whether a CoCa's decoder attends to its vision transformer's square grid of patch tokens (no
    attentional pooler in between): the tokens the where-to-look loss names."""
    visual = getattr(model, "visual", None)
    grid = getattr(visual, "grid_size", None)
    return is_coca(model) and getattr(visual, "attn_pool", True) is None and grid is not None and grid[0] == grid[1]


@functools.cache  # called for every length group of every step; the same few grids. Never modified.
def position_patches(tokens: int) -> torch.Tensor:
    """(len(POSITIONS) + 1, tokens) float: for each world position, the patch of a square grid of `tokens`
    image tokens that holds its centre (on the 3 x 3 grid of 48 px / 16 px, each position has its own);
    last, NOWHERE's: every patch that holds no position's centre (there, the four corners)."""
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"attention_loss_weight needs a square grid of image tokens, got {tokens}")
    patches = torch.zeros(len(POSITIONS) + 1, tokens)
    for i, position in enumerate(POSITIONS):
        x, y = POSITION_CENTRES[position]
        patches[i, int(y * grid) * grid + int(x * grid)] = 1.0
    patches[-1] = patches[:-1].sum(dim=0) == 0
    return patches


def _by_length(
    tokens: torch.Tensor,
    extra: int,
    run,
    labels: bool = False,
    taught: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
):
    """`run(rows, cut)` over groups of rows of similar length, each `cut` to its longest text
    plus `extra` columns, reassembled in the order of `tokens`.

    Without `labels`: `run` returns one row per text, and the result is those rows in order.
    With `labels` (decoder texts): `run` returns the states at every position, and the result is
    the states that predict a non-padding next token (a `taught` one, when given), those tokens
    (grouped, not in order), and their `weights` (a float tensor like `tokens`; None without).
    """
    lengths = (tokens != PAD_ID).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    parts, part_labels, part_weights = [], [], []
    for start, stop, longest in _length_groups(lengths[order].tolist(), extra):
        rows = order[start:stop]
        cut = tokens[rows, : min(longest + extra, tokens.shape[1])]
        out = run(rows, cut)
        if labels:
            next_tokens = cut[:, 1:]  # predict token t+1 from tokens .. t, as CoCa.forward does
            keep = next_tokens != PAD_ID
            if taught is not None:
                keep &= taught[rows, 1 : cut.shape[1]]
            out = out[keep]
            part_labels.append(next_tokens[keep])
            if weights is not None:
                part_weights.append(weights[rows, 1 : cut.shape[1]][keep])
        parts.append(out)
    if labels:  # the loss is a mean over tokens: their order does not matter
        return torch.cat(parts), torch.cat(part_labels), torch.cat(part_weights) if weights is not None else None
    return torch.cat(parts)[torch.argsort(order)]


def _length_groups(lengths: list[int], extra: int) -> list[tuple[int, int, int]]:
    """Split ascending `lengths` into runs (start, stop, longest) that minimise the positions
    computed, each run costing (its size) x (its longest + extra) + GROUP_OVERHEAD."""
    n = len(lengths)
    # Runs only ever end where the length changes (or at the end).
    ends = [i + 1 for i in range(n) if i == n - 1 or lengths[i + 1] != lengths[i]]
    best: dict[int, tuple[int, int]] = {0: (0, 0)}  # end of a prefix -> (cost, start of its last run)
    for stop in ends:
        best[stop] = min(
            (best[start][0] + (stop - start) * (lengths[stop - 1] + extra) + GROUP_OVERHEAD, start)
            for start in [0] + ends
            if start < stop and start in best
        )
    groups: list[tuple[int, int, int]] = []
    stop = n
    while stop:
        start = best[stop][1]
        groups.append((start, stop, lengths[stop - 1]))
        stop = start
    return groups[::-1]
