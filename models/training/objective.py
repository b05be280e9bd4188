"""Training losses: open_clip's CoCaLoss (contrastive + captioning), or ClipLoss alone.

CoCa's decoder projects every position onto the 49,408-token vocabulary, which dominates
the cost of a small model. Three savings, none of which changes the loss value:
- decoder texts are cut after the longest one in the batch (attention is causal);
- only non-padding positions are projected (padding is ignored by the loss anyway);
- columns of the projection that are all zero give logit 0, so tokens whose column is zero
  and which are not a target in this batch are folded into one logit, log(count), instead of
  one column each. The difference from full-vocabulary training is that those columns get no
  gradient (full training would push them slightly negative) and stay zero until their token
  first appears as a target.
A model trained from scratch starts with an all-zero projection (starting_model.py), so only
tokens that ever occur in a decoder target get a column. A pretrained CoCa has no zero
columns and gets the full vocabulary.
"""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import MultimodalTransformer
from torch import nn

PAD_ID = 0  # open_clip's SimpleTokenizer pads with 0


def is_coca(model: nn.Module) -> bool:
    return isinstance(getattr(model, "text_decoder", None), MultimodalTransformer)


class Objective:
    def __init__(self, model: nn.Module, contrastive_weight: float, caption_weight: float):
        self.coca = is_coca(model)
        if getattr(model, "logit_bias", None) is not None:
            raise NotImplementedError("SigLIP-style models (logit_bias) need SigLipLoss, which is not wired in")
        if self.coca:
            # Targets are packed (no padding), so nothing may be ignored: index 0 is a real token.
            self.loss = open_clip.CoCaLoss(caption_weight, contrastive_weight, pad_id=-100)
        else:
            self.loss = open_clip.ClipLoss()
            self.contrastive_weight = contrastive_weight

    def __call__(
        self, model: nn.Module, images: torch.Tensor, texts: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Losses for a batch; `targets` are the decoder's texts (ignored by plain CLIP)."""
        if not self.coca:
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(texts, normalize=True)
            contrastive = self.contrastive_weight * self.loss(image_features, text_features, model.logit_scale.exp())
            return {"loss": contrastive, "contrastive_loss": contrastive}

        image_latent, image_embs = model.visual(images)
        text_latent, _ = model.text(texts)
        # The text tower is causal, so cutting the decoder texts after their longest one leaves
        # every kept position unchanged (only the unused class token moves).
        targets = targets[:, : int((targets != PAD_ID).sum(dim=1).max())]
        _, token_embs = model.text(targets)

        logits, labels = _caption_logits(model.text_decoder, image_embs, token_embs, targets)
        contrastive, caption = self.loss(
            F.normalize(image_latent, dim=-1),
            F.normalize(text_latent, dim=-1),
            logits.unsqueeze(0),
            labels.unsqueeze(0),
            model.logit_scale.exp(),
        )
        return {"loss": contrastive + caption, "contrastive_loss": contrastive, "caption_loss": caption}


def _caption_logits(
    decoder: MultimodalTransformer, image_embs: torch.Tensor, token_embs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced logits for every non-padding target token, with labels indexing them."""
    labels = targets[:, 1:]  # predict token t+1 from tokens .. t, as CoCa.forward does
    hidden = _decoder_states(decoder, image_embs, token_embs[:, :-1])
    keep = labels != PAD_ID
    hidden = decoder.ln_final(hidden[keep])
    labels = labels[keep]

    projection = decoder.text_projection
    vocab = projection.shape[1]
    with torch.no_grad():
        live = projection.detach().ne(0).any(dim=0).nonzero().squeeze(1)
        columns = torch.unique(torch.cat([live, labels]))
    logits = (hidden @ projection[:, columns]).float()
    rest = vocab - len(columns)
    if rest:
        # The zero columns' logits are all 0: together they contribute log(rest) to the partition sum.
        logits = torch.cat([logits, logits.new_full((len(logits), 1), math.log(rest))], dim=1)
    return logits, torch.searchsorted(columns, labels)


def _decoder_states(decoder: MultimodalTransformer, image_embs: torch.Tensor, text_embs: torch.Tensor) -> torch.Tensor:
    """MultimodalTransformer.forward without its final norm and vocabulary projection."""
    if not decoder.batch_first:
        raise NotImplementedError("the text decoder must run batch-first")
    seq_len = text_embs.shape[1]
    x = text_embs
    for block, cross_attn in zip(decoder.resblocks, decoder.cross_attn):
        x = block(x, attn_mask=decoder.attn_mask[:seq_len, :seq_len])
        x = cross_attn(x, k_x=image_embs, v_x=image_embs)
    return x
