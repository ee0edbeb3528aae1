"""The pair-network contract: what every Siamese pair model (IDLA, IDLA-NCC, MLS, ...) provides.

`PairNetwork` holds what every pair model shares: per-image features from the tied trunk (`embed`), pair logits
from two feature batches (`pair_logits`), and batched scoring of all query x gallery pairs that embeds every
image once (`score`), which is what ranking with a pair network needs. A new pair model subclasses it, defines
`embed` and `pair_layers`, and registers its builder with `@register_model(name, task="pair")`; the pair
training task, evaluation and export then handle it without any other edit.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ModelError
from ...utils import progress
from .native import native_library

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(x: object, name: str, input_size: tuple[int, int], allow_uint8: bool = False) -> torch.Tensor:
    """A float (or, if allowed, uint8) (N, 3, H, W) batch of the network's input size, else a ModelError."""
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"{name}: expected a torch.Tensor of images, got {type(x).__name__}")
    expected = f"(N, 3, {input_size[0]}, {input_size[1]})"
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != input_size:
        raise ModelError(f"{name}: expected images of shape {expected}, got {tuple(x.shape)}; resize the crops "
                         f"to {input_size[0]}x{input_size[1]} (height x width) first")
    if not x.is_floating_point() and not (allow_uint8 and x.dtype == torch.uint8):
        raise ModelError(f"{name}: expected normalised float images, got dtype {x.dtype} "
                         "(model.prepare(images) converts uint8 images)")
    return x


class PairNetwork(nn.Module):
    """Base of the Siamese pair models: `forward(x1, x2)` -> (N, 2) logits, index 1 = same person."""

    input_size: tuple[int, int]
    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD

    def reset_parameters(self) -> None:
        """He (fan-in, ReLU) initialisation, zero biases: activations stay near unit scale through this
        BatchNorm-free stack (with PyTorch's default they shrink layer by layer; the logits start at ~+-0.05)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        last = [m for m in self.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.normal_(last.weight, std=0.01)  # the logits layer has no ReLU after it: start near 50/50

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image features of the tied trunk (computed once per image, shared by all its pairs)."""
        raise NotImplementedError

    @property
    def pair_chunk(self) -> int:
        """Pairs per pass through the pair layers. The PyTorch paths build large temporaries (~1 MB per pair): 32
        keeps them cache/allocator-friendly. The native kernels' temporaries are small, and larger calls split
        better over threads: 256 (IDLA on 2 threads: 2,444 against 1,686 pairs/s with 32; measured)."""
        native = native_library() is not None and all(m.native for m in self.modules() if hasattr(m, "native"))
        return 256 if native else 32

    def pair_layers(self, feats1: torch.Tensor, feats2: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features of both views -> (N, 2) logits."""
        raise NotImplementedError

    def pair_logits(self, feats1: torch.Tensor, feats2: torch.Tensor) -> torch.Tensor:
        """`pair_layers` over chunks of `pair_chunk` pairs (same result, less memory traffic)."""
        if feats1.shape != feats2.shape:
            raise ModelError(f"pair_logits: feature batches differ in shape: {tuple(feats1.shape)} vs "
                             f"{tuple(feats2.shape)}")
        step = self.pair_chunk
        if len(feats1) <= step:
            return self.pair_layers(feats1, feats2)
        return torch.cat([self.pair_layers(feats1[i:i + step], feats2[i:i + step])
                          for i in range(0, len(feats1), step)])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        check_images(x1, "x1", self.input_size)
        check_images(x2, "x2", self.input_size)
        if x1.shape[0] != x2.shape[0]:
            raise ModelError(f"x1 and x2 must hold the same number of images, got {x1.shape[0]} and {x2.shape[0]}")
        feats = self.embed(torch.cat([x1, x2]))  # one trunk call for both views: better GEMM shapes
        return self.pair_logits(feats[: x1.shape[0]], feats[x1.shape[0]:])

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> normalised float input on this model's device; float input unchanged."""
        if images.dtype != torch.uint8:
            return images
        device = next(self.parameters()).device
        x = images.to(device).float().div_(255.0)
        mean = torch.tensor(self.input_mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.input_std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def embed_batched(self, images: torch.Tensor, batch_size: int = 256, flip: bool = False) -> torch.Tensor:
        """Trunk features of many images (uint8 or normalised float), `batch_size` at a time; flip=True embeds
        the left-right mirrored images (test-time augmentation)."""
        check_images(images, "images", self.input_size, allow_uint8=True)
        return torch.cat([self.embed(self.prepare(images[i:i + batch_size].flip(-1) if flip
                                                  else images[i:i + batch_size]))
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def pair_scores(self, feats1: torch.Tensor, feats2: torch.Tensor, index1: torch.Tensor, index2: torch.Tensor,
                    batch_size: int = 512, symmetric: bool = False, show_progress: bool = False,
                    desc: str = "scoring pairs") -> torch.Tensor:
        """Same-person log-odds (logit_same - logit_different) of pairs (feats1[index1[i]], feats2[index2[i]]).

        Log-odds rank exactly like the softmax probability (sigmoid(score) = P(same)) but never saturate to
        ties at 1.0, which matters when ranking a gallery. symmetric=True averages the log-odds of both input
        orders: the pair layers are not symmetric (K and K' have their own weights), so the orders differ.
        """
        if index1.shape != index2.shape:
            raise ModelError(f"pair_scores: index1 and index2 differ in shape: {tuple(index1.shape)} vs "
                             f"{tuple(index2.shape)}")
        out = torch.empty(index1.numel(), dtype=torch.float32)
        flat1, flat2 = index1.reshape(-1), index2.reshape(-1)
        for start in progress(range(0, flat1.numel(), batch_size), desc=desc, enabled=show_progress):
            i1, i2 = flat1[start:start + batch_size], flat2[start:start + batch_size]
            logits = self.pair_logits(feats1[i1], feats2[i2]).float()
            if symmetric:
                logits = (logits + self.pair_logits(feats2[i2], feats1[i1]).float()) / 2
            out[start:start + len(i1)] = (logits[:, 1] - logits[:, 0]).cpu()
        return out.view(index1.shape)

    @torch.no_grad()
    def image_pair_scores(self, images1: torch.Tensor, images2: torch.Tensor, index1: torch.Tensor,
                          index2: torch.Tensor, batch_size: int = 512, symmetric: bool = False,
                          flip: bool = False, show_progress: bool = False,
                          desc: str = "scoring pairs") -> torch.Tensor:
        """Log-odds of the image pairs (images1[index1[i]], images2[index2[i]]) in eval mode, each image through
        the trunk once per view (once if `images2 is images1`). Test-time augmentation: symmetric averages both
        input orders, flip averages in the pair of mirrored images. The train/eval mode is restored."""
        check_images(images1, "images1", self.input_size, allow_uint8=True)
        check_images(images2, "images2", self.input_size, allow_uint8=True)
        was_training = self.training
        self.eval()
        try:
            total = torch.zeros(index1.shape)
            views = (False, True) if flip else (False,)
            for mirrored in views:
                feats1 = self.embed_batched(images1, batch_size, flip=mirrored)
                feats2 = feats1 if images2 is images1 else self.embed_batched(images2, batch_size, flip=mirrored)
                view = f"{desc} (mirrored)" if mirrored else desc
                total += self.pair_scores(feats1, feats2, index1, index2, batch_size, symmetric, show_progress, view)
            return total / len(views)
        finally:
            self.train(was_training)

    def score(self, query_images: torch.Tensor, gallery_images: torch.Tensor, batch_size: int = 512,
              symmetric: bool = False, flip: bool = False) -> torch.Tensor:
        """(Q, G) same-person log-odds of every query x gallery pair; each image goes through the trunk once
        (per test-time view: see `image_pair_scores`).

        Images are uint8 or normalised float. Dropout is off for the call (the train/eval mode is restored).
        """
        check_images(query_images, "query_images", self.input_size, allow_uint8=True)
        check_images(gallery_images, "gallery_images", self.input_size, allow_uint8=True)
        q_index = torch.arange(len(query_images)).repeat_interleave(len(gallery_images))
        g_index = torch.arange(len(gallery_images)).repeat(len(query_images))
        scores = self.image_pair_scores(query_images, gallery_images, q_index, g_index, batch_size, symmetric, flip)
        return scores.view(len(query_images), len(gallery_images))


def pair_head(num_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Fully connected `hidden` units -> ReLU -> dropout -> 2 logits (same / different)."""
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout={dropout}: must be within [0, 1)")
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, 2))
