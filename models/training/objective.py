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
        self, model: nn.Module, images: torch.Tensor, texts: torch.Tensor, targets: torch.Tensor,
        positives: torch.Tensor | None = None, complete: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for a batch. `texts` (contrastive) and `targets` (the decoder's, ignored by plain
        CLIP) are whole multiples of the images, image i's in consecutive rows; `positives[j, i]`
        marks text j as describing image i (None: each text describes its own image only);
        `complete` marks the texts image → text matching ranks (default: all)."""
        if positives is None and len(texts) != len(images):
            raise ValueError("several contrastive texts per image need `positives`")
        if not self.coca:
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(texts, normalize=True)
            if positives is None:
                contrastive = self.loss(image_features, text_features, model.logit_scale.exp())
            else:
                contrastive = multi_positive_clip_loss(
                    image_features, text_features, model.logit_scale.exp(), positives, complete
                )
            contrastive = self.contrastive_weight * contrastive
            return {"loss": contrastive, "contrastive_loss": contrastive}

        image_latent, image_embs = model.visual(images)
        text_latent, _ = model.text(texts)
        # The text tower is causal, so cutting the decoder texts after their longest one leaves
        # every kept position unchanged (only the unused class token moves).
        targets = targets[:, : int((targets != PAD_ID).sum(dim=1).max())]
        _, token_embs = model.text(targets)
        if len(targets) != len(images):  # several decoder texts per image share its encoding
            image_embs = image_embs.repeat_interleave(len(targets) // len(images), dim=0)

        logits, labels = _caption_logits(model.text_decoder, image_embs, token_embs, targets)
        image_features, text_features = F.normalize(image_latent, dim=-1), F.normalize(text_latent, dim=-1)
        if positives is None:
            contrastive, caption = self.loss(
                image_features, text_features, logits.unsqueeze(0), labels.unsqueeze(0), model.logit_scale.exp()
            )
        else:
            caption = self.loss.caption_loss_weight * F.cross_entropy(logits, labels)
            contrastive = self.loss.clip_loss_weight * multi_positive_clip_loss(
                image_features, text_features, model.logit_scale.exp(), positives, complete
            )
        return {"loss": contrastive + caption, "contrastive_loss": contrastive, "caption_loss": caption}


def multi_positive_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor,
    complete: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy when a text may describe several images of the batch.

    Each text's target is spread evenly over the images it describes (text → image). Each
    image's target is spread evenly over the complete texts describing it, and only complete
    texts compete in its softmax (image → text): a partial query ("a red shape") is a fine
    way to find an image but not the text an image should be matched with. With `positives`
    the identity and every text complete, this is open_clip's ClipLoss. A text describing no
    image (a hard negative) only appears in the image → text softmaxes.
    """
    positives = positives.to(device=image_features.device, dtype=torch.float32)
    logits = (logit_scale * image_features @ text_features.T).float()  # (images, texts)
    # A text that describes no image (a hard negative) only competes in image → text.
    found = positives.sum(1) > 0
    text_to_image = -(positives[found] * logits.T[found].log_softmax(dim=1)).sum(1) / positives[found].sum(1)
    if complete is not None and not bool(complete.all()):
        keep = complete.to(image_features.device)
        logits, positives = logits[:, keep], positives[keep]
    image_to_text = -(positives.T * logits.log_softmax(dim=1)).sum(1) / positives.T.sum(1).clamp(min=1)
    return (image_to_text.mean() + text_to_image.mean()) / 2


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
