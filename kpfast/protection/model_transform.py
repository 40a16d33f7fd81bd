"""Protect a trained model without retraining: fold a block-wise key into its weights.

For a model whose stem is a non-overlapping patch embedding (a convolution with kernel = stride =
patch size = the key's block size M), the key can be folded into the trained weights: the
protected model, fed key-transformed images, computes what the plain model computes on plain
images, and a wrong key fails (AprilPyone & Kiya, arXiv 2207.05366 for ViT, 2207.11939 for
ConvMixer). The math, derived and checked, is docs/semantics.md §12; in short:

* shuffle and negative/positive, followed by Normalize(mean, std), are an affine map of every
  block vector: ``y[l] = sign[l] * x[src[l]] + offset[l]``, then normalised. The plain model's
  normalised input is therefore an affine function of the protected input, ``u[src[l]] =
  alpha[l] * y[l] + beta[l]``, which the patch embedding absorbs exactly: its weight ``E`` (viewed
  as D x L in kpfast's in-block order (row, column, channel)) becomes ``E[:, src] * alpha`` and
  its bias gains ``E[:, src] @ beta``;
* block scrambling permutes the patch tokens; a ViT's blocks treat tokens alike in any order and
  its readout (class token or pooling) ignores their order, so permuting the patch tokens'
  position embeddings the same way (the class token's untouched) absorbs it exactly. A ConvMixer
  has no position embedding and its depthwise convolutions mix neighbouring patches: it cannot
  absorb scrambling;
* FFX is a table lookup on quantised values, not an affine map: it cannot be folded at all.

Two levels:

* :func:`transform_model`, :func:`untransform_model`, :func:`rekey_model` work on the network
  (kpfast's ``vit`` and ``convmixer``, or timm's ``VisionTransformer``) and return a changed copy;
  feed the result ``BlockTransform(keys, ops, mean, std)(images)``.
* :func:`protect`, :func:`unprotect`, :func:`rekey` work on :class:`ProtectedModel` files' models:
  a plain one (behind ``Normalize``) becomes a protected one (behind its ``BlockTransform``) and
  back.

Every fold is computed in float64 and rounded once to the weights' dtype, so ``protected(
transform(x))`` equals ``plain(x)`` to float32 rounding, and :func:`rekey_model` rounds once, not
twice. Position embeddings are only permuted: bit-exact both ways.

Example::

    keys = KeySet.generate(4, 3, grid=(8, 8))        # 32x32 images, 4x4 patches
    protected = protect(ProtectedModel.load("plain.pt"), keys, ("shuffle", "negpos", "scramble"))
    protected.save("protected.pt"); keys.save("model.key")
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import plan
from ..errors import ConfigError
from ..keys import KeySet
from ..models import ConvMixer, ViT
from ..normalize import Normalize
from ..plan import Gather, Negate
from ..plan import Normalize as NormalizeStep
from ..transforms import BlockTransform
from .model import ProtectedModel, check_fingerprint

__all__ = ["FOLDABLE", "transform_model", "untransform_model", "rekey_model", "protect", "unprotect", "rekey"]

FOLDABLE = ("shuffle", "negpos", "scramble")  # the transforms a patch embedding can absorb

FFX_REFUSAL = ("FFX cannot be folded into a model's weights: it maps each pixel value through a keyed table of "
               "quantised levels, which is not an affine map of the pixels, and a patch embedding absorbs only "
               "affine changes of its input; train a model on FFX images instead (kpfast train --ops ffx)")
CONVMIXER_REFUSAL = ("block scrambling cannot be folded into a ConvMixer: it has no position embedding to permute, "
                     "and its depthwise convolutions mix neighbouring patches, so moving the patches changes what "
                     "it computes; fold shuffle and negpos (exact), or train on scrambled images")
NO_POSITIONS_REFUSAL = ("this ViT has no position embedding: it cannot tell the patches' locations apart, so block "
                        "scrambling would not change its output and would protect nothing")

Positions = Callable[[tuple[int, int]], torch.Tensor]  # grid -> a view [rows, columns, D] of the parameter


@dataclass
class _Stem:
    """Where a model keeps what a key folds into."""
    conv: nn.Conv2d                 # the patch embedding
    positions: Positions | None     # the patch tokens' position embeddings; None: scrambling is refused
    refusal: str = ""               # why, when positions is None


# --- the models ----------------------------------------------------------------------------------

def _stem(model: nn.Module) -> _Stem:
    if isinstance(model, ViT):
        return _Stem(model.patch_embed, lambda grid: model.positions(*grid).permute(1, 2, 0))
    if isinstance(model, ConvMixer):
        return _Stem(model.patch_embed, None, CONVMIXER_REFUSAL)
    timm_vit = _timm_vision_transformer(model)
    if timm_vit is not None:
        return timm_vit
    raise ConfigError(f"cannot fold a key into a {type(model).__name__}: supported are kpfast's 'vit' and "
                      "'convmixer' (kpfast.models.create_model) and timm's VisionTransformer, whose stem is a "
                      "non-overlapping patch embedding")


def _timm_vision_transformer(model: nn.Module) -> _Stem | None:
    if not type(model).__module__.startswith("timm."):
        return None  # timm is an optional extra: never imported for other models
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return None
    if model.pos_embed is None:
        return _Stem(model.patch_embed.proj, None, NO_POSITIONS_REFUSAL)
    grid = tuple(model.patch_embed.grid_size)
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens  # class (and register) tokens first

    def positions(key_grid: tuple[int, int]) -> torch.Tensor:
        if tuple(key_grid) != grid:
            raise ConfigError(f"the key scrambles a {key_grid[0]}x{key_grid[1]} grid of blocks, but this ViT's "
                              f"position embeddings are for {grid[0]}x{grid[1]} patches")
        return model.pos_embed[0, prefix:].view(*grid, -1)

    return _Stem(model.patch_embed.proj, positions)


def _check(stem: _Stem, keys: KeySet, ops: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The chain as a tuple and the scrambling grid (None), or a clear error naming what cannot fold."""
    if not isinstance(keys, KeySet):
        raise TypeError(f"keys must be a KeySet, got {type(keys).__name__}")
    ops, _ = plan.check_options(ops, keys.channels)
    if not ops:
        raise ConfigError(f"give the transforms to fold: some of {', '.join(FOLDABLE)}")
    if "ffx" in ops:
        raise ConfigError(FFX_REFUSAL)
    conv, M = stem.conv, keys.block_size
    if conv.kernel_size != (M, M) or conv.stride != (M, M):
        raise ConfigError(f"the key is for {M}x{M} blocks, but the patch embedding has kernel "
                          f"{tuple(conv.kernel_size)} and stride {tuple(conv.stride)}: block size, kernel and "
                          "stride must be equal")
    if (conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1) or conv.groups != 1
            or conv.in_channels != keys.channels):
        raise ConfigError(f"the patch embedding must be a plain convolution of {keys.channels} channels without "
                          f"padding or dilation (got in_channels={conv.in_channels}, padding={conv.padding}, "
                          f"dilation={conv.dilation}, groups={conv.groups})")
    grid = plan.scramble_grid([keys], ops)
    if grid is not None and stem.positions is None:
        raise ConfigError(stem.refusal)
    return ops, grid


# --- the math --------------------------------------------------------------------------------------

def _input_map(keys: KeySet, ops: Sequence[str], mean: Sequence[float] | None,
               std: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(src, alpha, beta)`` with ``u[src[l]] = alpha[l] * y[l] + beta[l]`` in every block: the plain
    model's normalised input ``u = (x - mean) / std`` from the protected input ``y`` (the chain's
    in-block steps on x, then Normalize of the destination channel), in float64.

    The steps are plan.chain_steps', so the map is the transform's own. Composed exactly: the
    chain is ``y[l] = (sign[l] * x[src[l]] + offset[l] - m[l]) / s[l]`` with sign = +-1 and
    offset in {0, 1}, hence ``x[src[l]] = sign[l] * (s[l] * y[l] + m[l] - offset[l])``.
    """
    L = keys.num_positions
    src, sign, offset = torch.arange(L), torch.ones(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    m, s = torch.zeros(L, dtype=torch.float64), torch.ones(L, dtype=torch.float64)
    for step in plan.chain_steps([keys], ops, mean=mean, std=std):
        if isinstance(step, Gather):
            index = step.index[0]
            src, sign, offset = src[index], sign[index], offset[index]
        elif isinstance(step, Negate):
            mask = step.mask[0]
            sign, offset = torch.where(mask, -sign, sign), torch.where(mask, 1 - offset, offset)
        elif isinstance(step, NormalizeStep):  # the last step; per position, of its channel
            m, s = step.mean.double(), step.std.double()
        else:  # only FFX quantises, and _check refuses it
            raise ConfigError(FFX_REFUSAL)
    # The plain model normalises position src[l] with the statistics of its own channel.
    alpha = sign * s / s[src]
    beta = (sign * (m - offset) - m[src]) / s[src]
    return src, alpha, beta


@dataclass
class _Weights:
    """What a key changes, in float64: the patch embedding as D x L in kpfast's in-block order
    (l = (row * M + column) * C + channel), its bias, and the patch tokens' position embeddings
    [B, D] in row-major block order (None without scrambling)."""
    embedding: torch.Tensor
    bias: torch.Tensor
    positions: torch.Tensor | None


def _read(stem: _Stem, grid: tuple[int, int] | None) -> _Weights:
    w = stem.conv.weight.detach().double()                         # [D, C, M, M]: (channel, row, column)
    bias = stem.conv.bias.detach().double() if stem.conv.bias is not None else torch.zeros(len(w), dtype=torch.float64)
    positions = None if grid is None else stem.positions(grid).detach().double().reshape(grid[0] * grid[1], -1)
    return _Weights(w.permute(0, 2, 3, 1).reshape(len(w), -1), bias, positions)


@torch.no_grad()
def _write(stem: _Stem, weights: _Weights, grid: tuple[int, int] | None) -> None:
    conv = stem.conv
    D, C, M, _ = conv.weight.shape
    conv.weight.copy_(weights.embedding.view(D, M, M, C).permute(0, 3, 1, 2))
    if conv.bias is not None:
        conv.bias.copy_(weights.bias)
    elif weights.bias.any():  # the fold needs a bias that the stem did not have
        conv.bias = nn.Parameter(weights.bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    if grid is not None:
        view = stem.positions(grid)
        view.copy_(weights.positions.view(view.shape))


def _fold(weights: _Weights, keys: KeySet, ops: Sequence[str], mean, std, *, inverse: bool) -> _Weights:
    """The weights of the protected model from the plain one's (inverse: the other way)."""
    src, alpha, beta = _input_map(keys, ops, mean, std)
    if inverse:
        plain = torch.empty_like(weights.embedding)
        plain[:, src] = weights.embedding / alpha                  # E[:, src] = E' / alpha
        embedding, bias = plain, weights.bias - plain[:, src] @ beta
    else:
        moved = weights.embedding[:, src]
        embedding, bias = moved * alpha, weights.bias + moved @ beta
    positions = weights.positions
    block_src = plan.block_gather([keys], ops, inverse)
    if block_src is not None:  # protected token b is plain token block_src[b]: so is its position
        positions = positions[block_src[0]]
    return _Weights(embedding, bias, positions)


def _apply(model: nn.Module, folds: Sequence[tuple[KeySet, Sequence[str], bool]], mean, std) -> nn.Module:
    """A copy of ``model`` with the folds (keys, ops, inverse) applied in order, rounded once."""
    stem = _stem(model)
    checked = [(keys, *_check(stem, keys, ops), inverse) for keys, ops, inverse in folds]
    grids = {grid for _, _, grid, _ in checked if grid is not None}
    if len(grids) > 1:
        raise ConfigError(f"the keys scramble different grids of blocks ({' and '.join(map(str, sorted(grids)))}); "
                          "a model serves one image size: re-key with a key for the same grid")
    grid = next(iter(grids), None)
    weights = _read(stem, grid)
    for keys, ops, _, inverse in checked:
        weights = _fold(weights, keys, ops, mean, std, inverse=inverse)
    out = copy.deepcopy(model)
    _write(_stem(out), weights, grid)
    return out


# --- networks ------------------------------------------------------------------------------------

def transform_model(model: nn.Module, keys: KeySet, ops: Sequence[str], *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> nn.Module:
    """A protected copy of a trained network: ``transform_model(model, keys, ops, mean=m, std=s)``
    fed ``BlockTransform(keys, ops, m, s)(x)`` computes what ``model`` computes on
    ``Normalize(m, s)(x)`` (to float32 rounding). ``model`` is left unchanged.

    Args:
        model: kpfast's ``vit`` or ``convmixer``, or a timm ``VisionTransformer``, with patch size =
            ``keys.block_size``.
        keys: the key set; with ``"scramble"`` its grid must be the model's images' (``H // M, W // M``).
        ops: the chain, any of :data:`FOLDABLE` in any order (FFX is refused: it is not affine;
            scrambling is refused for a ConvMixer: it has no position embedding).
        mean, std: the normalisation the model was trained with (None: none, images in [0, 1]).

    Returns:
        The copy, on the model's device, in the model's mode. If the stem had no bias and the
        fold needs one (NP or normalisation), the copy's stem gains one.
    """
    return _apply(model, [(keys, ops, False)], mean, std)


def untransform_model(model: nn.Module, keys: KeySet, ops: Sequence[str], *, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> nn.Module:
    """The plain network back from a protected one and its key (the inverse of :func:`transform_model`)."""
    return _apply(model, [(keys, ops, True)], mean, std)


def rekey_model(model: nn.Module, keys: KeySet, new_keys: KeySet, ops: Sequence[str], *,
                new_ops: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> nn.Module:
    """A protected network moved from ``keys`` to ``new_keys`` (and from ``ops`` to ``new_ops``,
    default the same chain): the inverse with the old key and the fold with the new one, in
    float64, rounded once."""
    return _apply(model, [(keys, ops, True), (new_keys, ops if new_ops is None else new_ops, False)], mean, std)


# --- ProtectedModel ----------------------------------------------------------------------------------

def _normalization(transform: nn.Module, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A plain model's Normalize statistics, one per channel."""
    if not isinstance(transform, Normalize):
        raise ConfigError(f"expected a plain model (behind Normalize), got one behind {type(transform).__name__} "
                          f"(key fingerprint {transform.fingerprint()}): re-key a protected model with rekey()")
    config = transform.config()
    mean, std = config["mean"], config["std"]
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    return tuple(mean), tuple(std)


def _block_transform(protected: ProtectedModel) -> BlockTransform:
    transform = protected.transform
    if not isinstance(transform, BlockTransform):
        raise ConfigError(f"expected a protected model (behind a BlockTransform), got one behind "
                          f"{type(transform).__name__}")
    return transform


def protect(plain: ProtectedModel, keys: KeySet, ops: Sequence[str]) -> ProtectedModel:
    """A protected model from a plain one (a ProtectedModel behind ``Normalize``), without
    training: its network with the key folded in (:func:`transform_model`), behind
    ``BlockTransform(keys, ops, mean, std)`` with the plain model's statistics."""
    mean, std = _normalization(plain.transform, plain.model.in_channels)
    model = transform_model(plain.model, keys, ops, mean=mean, std=std)
    return ProtectedModel(model, BlockTransform(keys, ops, mean, std))


def unprotect(protected: ProtectedModel, keys: KeySet) -> ProtectedModel:
    """The plain model (behind ``Normalize``) back from a protected one and its key."""
    transform = _block_transform(protected)
    check_fingerprint(protected.key_fingerprint, keys)
    mean, std = _statistics(transform)
    model = untransform_model(protected.model, keys, transform.ops, mean=transform.mean, std=transform.std)
    return ProtectedModel(model, Normalize(mean, std))


def rekey(protected: ProtectedModel, keys: KeySet, new_keys: KeySet,
          ops: Sequence[str] | None = None) -> ProtectedModel:
    """A protected model moved to ``new_keys`` (and to the chain ``ops``, default its own)."""
    transform = _block_transform(protected)
    check_fingerprint(protected.key_fingerprint, keys)
    new_ops = transform.ops if ops is None else tuple(ops)
    model = rekey_model(protected.model, keys, new_keys, transform.ops, new_ops=new_ops, mean=transform.mean,
                        std=transform.std)
    return ProtectedModel(model, BlockTransform(new_keys, new_ops, transform.mean, transform.std))


def _statistics(transform: BlockTransform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The Normalize of a plain model served like ``transform`` (none: mean 0, std 1)."""
    if transform.mean is None:
        return (0.0,) * transform.channels, (1.0,) * transform.channels
    return transform.mean, transform.std
