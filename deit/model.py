"""The Vision Transformer used by DeiT, with PLSC's factory names and state_dict keys."""
import math
from functools import partial

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

_zeros = nn.initializer.Constant(0.0)
_ones = nn.initializer.Constant(1.0)


def drop_path(x, rate: float, training: bool):
    """Stochastic depth per sample (timm's drop_path): scale the kept samples by 1/keep."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = paddle.floor(keep + paddle.rand([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype))
    return x * (mask / keep)  # as timm: scale the per-sample mask, one pass over x


class DropPath(nn.Layer):
    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        return drop_path(x, self.rate, self.training)


class Mlp(nn.Layer):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Layer):
    """Multi-head self attention through the fused scaled_dot_product_attention kernel.

    qkv is split along the head axis (no `qkv[0]` indexing, whose slice backward is slow) and
    kept in the [batch, tokens, heads, head_dim] layout the fused kernel takes, so no transposes.
    """

    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        return self.proj_drop(self.proj(self.attend(self.qkv(x))))

    def attend(self, qkv):
        """softmax(q k^T / sqrt(head_dim)) v from the qkv projection [batch, tokens, 3 * dim];
        returns [batch, tokens, dim]. (The exported graph keeps exactly this op sequence: a
        5-D reshape here made Paddle Inference's oneDNN passes 2x slower on the demo model.)"""
        b, n, width = qkv.shape
        h = self.num_heads
        q, k, v = paddle.split(qkv.reshape([b, n, 3 * h, width // (3 * h)]), 3, axis=2)  # backward is one concat
        if q.dtype == paddle.float32 and not SDPA_SELECTS_BY_DTYPE and not paddle.get_device().startswith("cpu"):
            out = explicit_attention(q, k, v, self.attn_drop, self.training)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop, training=self.training)
        return out.reshape([b, n, width // 3])


# Paddle 3.0-3.2's scaled_dot_product_attention takes flash attention on any GPU when there is
# no mask, and flash attention has float16/bfloat16 kernels only: an fp32 run (PLSC's fp32
# config, --eval, --predict) fails there. 3.3 chooses its kernel by dtype (paddle/nn/functional/sdpa.py).
SDPA_SELECTS_BY_DTYPE = tuple(int(p) for p in paddle.__version__.split(".")[:2] if p.isdigit()) >= (3, 3) \
    or paddle.__version__.startswith("0.0")  # a develop build


def explicit_attention(q, k, v, dropout: float = 0.0, training: bool = False):
    """softmax(q k^T / sqrt(d)) v for [batch, tokens, heads, head_dim] inputs, in plain ops."""
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
    weights = F.softmax(paddle.matmul(q, k, transpose_y=True) * (q.shape[-1] ** -0.5), axis=-1)
    weights = F.dropout(weights, dropout, training=training)
    return paddle.matmul(weights, v).transpose([0, 2, 1, 3])


class Block(nn.Layer):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop=0.0, drop_path_rate=0.0, qkv_bias=True,
                 epsilon=1e-6, attn_drop=0.0):
        super().__init__()
        norm = partial(nn.LayerNorm, epsilon=epsilon)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _recompute(block, x):
    from paddle.distributed.fleet.utils import recompute
    return recompute(block, x, preserve_rng_state=True, use_reentrant=True)


class PatchEmbed(nn.Layer):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose([0, 2, 1])


class VisionTransformer(nn.Layer):
    """ViT as in DeiT: patch conv, cls token, learned position embedding, pre-norm blocks,
    final LayerNorm, linear head on the cls token. Drop-path grows linearly over depth.

    `distilled`: DeiT's distillation token after the cls token, with its own position slot and
    head (`dist_token`, `head_dist`: facebookresearch/deit's DistilledVisionTransformer, timm's
    VisionTransformerDistilled). In training it returns both heads' logits (class, distillation)
    for the distillation loss; in eval mode their mean, as the official code does.

    `recompute` k > 0: every k-th block (1: all) keeps only its input in training and runs its
    forward again in the backward (Paddle's fleet recompute, the RNG state kept, so drop-path
    draws the same masks twice): activation memory for ViT-L/H at 384 px, for about a third
    more compute in those blocks. Evaluation, no-grad and export run the blocks plainly."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, class_num=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
                 init="deit", qkv_bias=True, epsilon=1e-6, attn_drop_rate=0.0, distilled=False, recompute=0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if recompute < 0:
            raise ValueError(f"recompute must be >= 0 (0: off, k: every k-th block), got {recompute}")
        self.recompute = recompute
        self.class_num, self.img_size, self.patch_size = class_num, img_size, patch_size
        self.distilled = distilled
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        prefix = 2 if distilled else 1
        self.pos_embed = self.create_parameter([1, num_patches + prefix, embed_dim], default_initializer=_zeros)
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=_zeros)
        if distilled:
            self.dist_token = self.create_parameter([1, 1, embed_dim], default_initializer=_zeros)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.LayerList([Block(embed_dim, num_heads, mlp_ratio, drop_rate, r, qkv_bias, epsilon,
                                          attn_drop_rate) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, epsilon=epsilon)
        self.head = nn.Linear(embed_dim, class_num) if class_num > 0 else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(embed_dim, class_num) if class_num > 0 else nn.Identity()
        init_weights(self, init)

    def forward_features(self, x):
        """The final LayerNorm's output at the prefix tokens: cls, or (cls, dist) if distilled."""
        x = self.patch_embed(x)
        tokens = [self.cls_token] + ([self.dist_token] if self.distilled else [])
        prefix = [t.expand([x.shape[0], -1, -1]) for t in tokens]
        x = self.pos_drop(paddle.concat(prefix + [x], axis=1) + self.pos_embed)
        recompute = self.recompute and self.training and paddle.is_grad_enabled() and paddle.in_dynamic_mode()
        for i, block in enumerate(self.blocks):
            x = _recompute(block, x) if recompute and i % self.recompute == 0 else block(x)
        x = self.norm(x)
        return (x[:, 0], x[:, 1]) if self.distilled else x[:, 0]

    def forward(self, x, both_heads=None):
        """Logits; a distilled model's (class, distillation) pair in training or with
        `both_heads=True` (an evaluation of each head), else their mean."""
        if not self.distilled:
            return self.head(self.forward_features(x))
        cls, dist = self.forward_features(x)
        cls, dist = self.head(cls), self.head_dist(dist)
        return (cls, dist) if (self.training if both_heads is None else both_heads) else (cls + dist) / 2


def init_weights(model: VisionTransformer, scheme: str = "deit") -> None:
    """'deit': official DeiT/timm (trunc normal std .02 for Linear weights and the tokens,
    zero bias, LayerNorm 1/0, and the patch conv as PyTorch initializes a conv: weight and bias
    from U(+-1/sqrt(fan_in)), where Paddle's conv default would be a 2.45x wider normal).
    'plsc': PLSC's factories, std .002 and Paddle's conv default (what PLSC's runs used)."""
    if scheme not in ("deit", "plsc"):
        raise ValueError(f"Model.init must be 'deit' or 'plsc', got {scheme!r}")
    std = 0.02 if scheme == "deit" else 0.002
    trunc = nn.initializer.TruncatedNormal(mean=0.0, std=std, a=-2.0, b=2.0)
    trunc(model.pos_embed)
    trunc(model.cls_token)
    if getattr(model, "distilled", False):
        trunc(model.dist_token)
    for layer in model.sublayers():
        if isinstance(layer, nn.Linear):
            trunc(layer.weight)
            if layer.bias is not None:
                _zeros(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            _ones(layer.weight)
            _zeros(layer.bias)
    if scheme == "deit":
        conv = model.patch_embed.proj
        bound = 1.0 / math.sqrt(conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3])
        for p in (conv.weight, conv.bias):
            nn.initializer.Uniform(-bound, bound)(p)


# The named models: PLSC's factory names, the official architectures (qkv bias, LayerNorm eps 1e-6)
ARCHITECTURES = {
    "DeiT_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                                  distilled=False),
    "DeiT_small_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                                   distilled=False),
    "DeiT_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                                  distilled=False),
    "DeiT_base_patch16_384": dict(img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                                  distilled=False),
}
# DeiT's distilled models (PaddleClas's names): the same architectures with a distillation token
for _name in ("DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "DeiT_base_patch16_224", "DeiT_base_patch16_384"):
    ARCHITECTURES[_name.replace("_patch", "_distilled_patch")] = dict(ARCHITECTURES[_name], distilled=True)
# Model.name VisionTransformer with nothing set: ViT-B/16 at 224 px
GENERIC = ARCHITECTURES["DeiT_base_patch16_224"]


def _factory(architecture):
    def build(**kwargs):
        return VisionTransformer(**{**architecture, **kwargs})
    return build


FACTORIES = {name: _factory(arch) for name, arch in ARCHITECTURES.items()}
DeiT_tiny_patch16_224 = FACTORIES["DeiT_tiny_patch16_224"]
DeiT_small_patch16_224 = FACTORIES["DeiT_small_patch16_224"]
DeiT_base_patch16_224 = FACTORIES["DeiT_base_patch16_224"]
DeiT_base_patch16_384 = FACTORIES["DeiT_base_patch16_384"]
DeiT_tiny_distilled_patch16_224 = FACTORIES["DeiT_tiny_distilled_patch16_224"]
DeiT_small_distilled_patch16_224 = FACTORIES["DeiT_small_distilled_patch16_224"]
DeiT_base_distilled_patch16_224 = FACTORIES["DeiT_base_distilled_patch16_224"]
DeiT_base_distilled_patch16_384 = FACTORIES["DeiT_base_distilled_patch16_384"]
