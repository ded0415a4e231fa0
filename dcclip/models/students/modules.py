"""The student modules: a timm image tower with a feature-map adapter, a transformers text tower, and the Student
that holds both with a learnable logit scale.

Projections are sized from what the towers really output (a dummy forward at build time), never from declared
widths: open_clip's timm tower gets this wrong for models with a head conv (mobilenetv3: 1024 features, 288 declared).
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcclip.models.students.arch import POOLINGS

LOGIT_SCALE_INIT = 1 / 0.07  # CLIP's initial logit scale; the parameter stores its log


class ImageStudent(nn.Module):
    """A timm trunk, a linear projection of its pooled features and an optional adapter to the teacher's feature map."""

    def __init__(
        self,
        trunk: nn.Module,
        embed_dim: int,
        image_size: int,
        fmap_channels: int | None = None,
        fmap_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if (fmap_channels is None) != (fmap_grid is None):
            raise ValueError("fmap_channels and fmap_grid must be given together (the teacher's feature map shape)")
        self.trunk = trunk
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0) or 0)
        self.channels_last_output = getattr(trunk, "output_fmt", "NCHW") == "NHWC"
        fmap, pooled = self._probe(image_size)
        self.feature_dim = int(pooled.shape[-1])
        self.trunk_channels = int(fmap.shape[1])
        self.trunk_grid = (int(fmap.shape[2]), int(fmap.shape[3]))
        self.proj = nn.Linear(self.feature_dim, embed_dim, bias=False)
        self.fmap_grid = (int(fmap_grid[0]), int(fmap_grid[1])) if fmap_grid is not None else None
        self.adapter = nn.Conv2d(self.trunk_channels, fmap_channels, kernel_size=1) if fmap_channels else None

    @torch.no_grad()
    def _probe(self, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one dummy image through the trunk (eval mode) to learn the real feature-map and pooled widths."""
        was_training = self.trunk.training
        self.trunk.eval()
        try:
            pixels = torch.zeros(1, 3, image_size, image_size)
            features = self.trunk.forward_features(pixels)
            pooled = self.trunk.forward_head(features, pre_logits=True)
            return self.feature_grid(features, image_size, image_size), pooled
        finally:
            self.trunk.train(was_training)

    def feature_grid(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The trunk's last-stage output as [B, C, h, w]: NCHW as is, NHWC permuted, ViT patch tokens as a grid."""
        if features.ndim == 4:
            return features.permute(0, 3, 1, 2) if self.channels_last_output else features
        if features.ndim != 3:
            raise ValueError(f"unsupported trunk output of shape {tuple(features.shape)}")
        tokens = features[:, self.num_prefix_tokens :]
        grid_h, grid_w = self._token_grid(height, width, tokens.shape[1])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w)

    def _token_grid(self, height: int, width: int, n_tokens: int) -> tuple[int, int]:
        """Patch grid of a token trunk: from its patch embedding when it says, else the square that fits."""
        patch_embed = getattr(self.trunk, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
            grid_h, grid_w = (int(v) for v in patch_embed.dynamic_feat_size((height, width)))
        else:
            grid_h = grid_w = math.isqrt(n_tokens)
        if grid_h * grid_w != n_tokens:
            raise ValueError(f"cannot arrange {n_tokens} patch tokens into a grid for a {height}x{width} image")
        return grid_h, grid_w

    def adapt(self, fmap: torch.Tensor) -> torch.Tensor:
        """Map the student's feature map onto the teacher's channels (1x1 conv) and grid."""
        assert self.adapter is not None and self.fmap_grid is not None
        return resize_grid(self.adapter(fmap), self.fmap_grid)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixels [B, 3, H, W] -> (embedding [B, D], not normalised; adapted feature map or None)."""
        features = self.trunk.forward_features(pixels)
        embedding = self.proj(self.trunk.forward_head(features, pre_logits=True))
        if self.adapter is None:
            return embedding, None
        fmap = self.feature_grid(features, pixels.shape[-2], pixels.shape[-1])
        return embedding, self.adapt(fmap)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> embedding only: the deployed (ONNX-exported) path, free of data-dependent control flow."""
        features = self.trunk.forward_features(pixels)
        return self.proj(self.trunk.forward_head(features, pre_logits=True))


def resize_grid(fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize [B, C, h, w] to the grid: unchanged, area-averaged when shrinking, bilinear otherwise."""
    height, width = fmap.shape[-2:]
    if (height, width) == tuple(grid):
        return fmap
    if height >= grid[0] and width >= grid[1]:
        return F.adaptive_avg_pool2d(fmap, grid)
    return F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)


class TextStudent(nn.Module):
    """A Hugging Face encoder, masked-mean or CLS pooling, and a linear projection to the shared embedding space."""

    def __init__(self, transformer: nn.Module, embed_dim: int, pooling: str = "mean", max_length: int = 64) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.transformer = transformer
        self.pooling = pooling
        self.max_length = max_length
        config = transformer.config
        # Explicit zero segment ids: the implicit buffer path slices by sequence length, which export handles worse.
        accepts = "token_type_ids" in inspect.signature(transformer.forward).parameters
        self.use_token_types = accepts and getattr(config, "type_vocab_size", 0) > 0
        self.proj = nn.Linear(config.hidden_size, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [T, L] (int64) -> embeddings [T, D], not normalised."""
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.use_token_types else {}
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.proj(self.pool(hidden, attention_mask))

    def forward_by_length(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_groups: int = 4
    ) -> torch.Tensor:
        """``forward``'s embeddings, computed over groups of similar length, each cut to its longest caption.

        Right padding is most of a training batch of short captions (toy world: 11 real tokens of 32 on average);
        the encoder's cost grows with the padded length, while masked attention and pooling make the padding inert.
        Left-padded or unsorted masks fall back to one call.
        """
        if input_ids.shape[0] == 0:
            return self(input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1)
        groups = length_groups(lengths, max_groups)
        if len(groups) == 1 or not is_right_padded(attention_mask, lengths):
            width = int(lengths.max()) if is_right_padded(attention_mask, lengths) else attention_mask.shape[1]
            return self(input_ids[:, :width], attention_mask[:, :width])
        pieces = []
        for rows in groups:
            width = int(lengths[rows].max())
            pieces.append(self(input_ids[rows, :width], attention_mask[rows, :width]))
        order = torch.cat(groups)
        return torch.cat(pieces)[torch.argsort(order)]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[T, L, H] -> [T, H]: mean over real tokens (padding ignored) or the first token."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def is_right_padded(attention_mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    """True when every row's real tokens come first (the mask is 1 on exactly its first ``length`` positions)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool(torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]))


def length_groups(lengths: torch.Tensor, max_groups: int, call_cost: int = 64) -> list[torch.Tensor]:
    """Row indices split, by ascending length, into the 1..max_groups equal groups that pad fewest tokens.

    ``call_cost`` (in padded tokens) charges each extra encoder call, so a batch of equal lengths stays one call.
    """
    order = torch.argsort(lengths, stable=True)
    ranked = lengths[order]
    best, best_cost = [order], int(ranked[-1]) * len(order) if len(order) else 0
    for k in range(2, max(1, max_groups) + 1):
        groups = [g for g in torch.tensor_split(order, k) if len(g)]
        cost = sum(int(lengths[g].max()) * len(g) for g in groups) + call_cost * (len(groups) - 1)
        if cost < best_cost:
            best, best_cost = groups, cost
    return best


class Student(nn.Module):
    """Image and text students, a learnable logit scale and the resolved architecture that rebuilds them."""

    def __init__(
        self, image: ImageStudent, text: TextStudent, arch: dict[str, Any], logit_scale_init: float = LOGIT_SCALE_INIT
    ) -> None:
        super().__init__()
        if logit_scale_init <= 0:
            raise ValueError(f"logit_scale_init is the scale itself and must be > 0, got {logit_scale_init}")
        self.image = image
        self.text = text
        self.arch = copy.deepcopy(arch)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> image embeddings (not normalised)."""
        return self.image.embed(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids + mask -> text embeddings (not normalised)."""
        return self.text(input_ids, attention_mask)

    def forward(
        self,
        pixels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        with_fmap: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        """Both towers in one call, so a DDP-wrapped student syncs gradients: image_emb, image_fmap, text_emb."""
        out: dict[str, torch.Tensor | None] = {}
        if pixels is not None:
            if with_fmap:
                out["image_emb"], out["image_fmap"] = self.image(pixels)
            else:
                out["image_emb"], out["image_fmap"] = self.image.embed(pixels), None
        if input_ids is not None:
            if attention_mask is None:
                raise ValueError("attention_mask is required with input_ids")
            out["text_emb"] = self.text(input_ids, attention_mask)
        return out
