"""Training-free attention probes: per-layer, per-head maps, entropy and attention-sink share.

:func:`probe_attention` runs a model once per text with every attention layer routed through the explicit
softmax (:func:`attnctl.llm.attention.materialized_attention`), records the probabilities and restores the
model. The attention sink (Xiao et al. 2023, "StreamingLLM"; Qiu et al. 2025, Sec. 4) is the share of a
query's attention that lands on the first token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from .attention import materialized_attention
from .patching import AttentionFunction, route_attention, select_layers


@dataclass
class AttentionProbe:
    """Attention maps of several texts: ``maps[i]`` is (layers, heads, tokens, tokens) for text i.

    ``layers`` lists the ``layer_idx`` of each recorded layer; ``tokens[i]`` are text i's token strings.
    Row r of a map is the distribution of query r over keys 0..r (float32, rows sum to one).
    """

    maps: list[torch.Tensor]
    layers: list[int]
    tokens: list[list[str]]

    def _rows(self) -> list[torch.Tensor]:
        """Per text, the map rows of queries 1.. (row 0 attends to the first token only, by causality)."""
        if any(m.shape[-1] < 2 for m in self.maps):
            raise ValueError("every text needs at least two tokens for entropy and sink statistics")
        return [m[:, :, 1:, :] for m in self.maps]

    def entropy(self) -> torch.Tensor:
        """(layers, heads): mean Shannon entropy in nats of the query rows 1.., over rows and texts."""
        per_text = [(-(rows * rows.clamp_min(1e-30).log()).sum(-1)).mean(-1) for rows in self._rows()]
        return torch.stack(per_text).mean(0)

    def sink_share(self) -> torch.Tensor:
        """(layers, heads): mean attention mass on the first token, over query rows 1.. and texts."""
        return torch.stack([rows[..., 0].mean(-1) for rows in self._rows()]).mean(0)

    def head_map(self, text: int, layer: int, head: int) -> torch.Tensor:
        """(tokens, tokens) map of one head; ``layer`` is a ``layer_idx``."""
        return self.maps[text][self.layers.index(layer), head]


def _recorder(records: list[torch.Tensor]):
    def factory(stock: AttentionFunction) -> AttentionFunction:
        def record(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            output, probs = materialized_attention(query, key, value, attention_mask, scale)
            records.append(probs.detach().cpu())
            return output.transpose(1, 2).contiguous(), None  # (b, q_len, heads, d)

        return record

    return factory


@torch.no_grad()
def probe_attention(
    model: PreTrainedModel,
    texts: Sequence[str] | Sequence[torch.Tensor],
    tokenizer=None,
    layers: Iterable[int] | None = None,
) -> AttentionProbe:
    """Record the attention maps of ``model`` on each text (strings with a ``tokenizer``, or 1-D id tensors).

    Texts run one at a time, so no padding enters the maps. The model is restored afterwards, also on errors.
    """
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one text or token-id tensor")
    if isinstance(texts[0], str) and tokenizer is None:
        raise ValueError("texts are strings but tokenizer is None; pass a tokenizer or 1-D token-id tensors")
    selected = select_layers(model, layers)
    records: list[torch.Tensor] = []
    maps, tokens = [], []
    with route_attention(model, {layer.index: _recorder(records) for layer in selected}):
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"][0] if isinstance(text, str) else text
            if ids.ndim != 1:
                raise ValueError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
            records.clear()
            model(input_ids=ids[None].to(model.device))
            maps.append(torch.cat(records, dim=0))  # (layers, heads, tokens, tokens)
            tokens.append(
                tokenizer.convert_ids_to_tokens(ids.tolist()) if tokenizer else [str(i) for i in ids.tolist()]
            )
    return AttentionProbe(maps, [layer.index for layer in selected], tokens)
