"""Multiply-accumulates of a ViT forward pass, counted from its shapes."""


def vit_macs(img_size: int, patch_size: int, embed_dim: int, depth: int, mlp_ratio: float = 4.0,
             class_num: int = 1000, in_chans: int = 3, distilled: bool = False) -> int:
    """Per image: patch conv, per block qkv + attention (QK^T and AV) + proj + MLP, and the
    head (two heads and one more token when distilled). LayerNorm, GELU, softmax and adds are
    left out, as the published figures do."""
    patches = (img_size // patch_size) ** 2
    prefix = 2 if distilled else 1
    tokens, d, hidden = patches + prefix, embed_dim, int(embed_dim * mlp_ratio)
    block = tokens * d * 3 * d + 2 * tokens * tokens * d + tokens * d * d + 2 * tokens * d * hidden
    return patches * d * in_chans * patch_size ** 2 + depth * block + prefix * d * class_num


def model_macs(model) -> int:
    blocks = model.blocks
    return vit_macs(model.img_size, model.patch_size, model.pos_embed.shape[-1], len(blocks),
                    blocks[0].mlp.fc1.weight.shape[1] / model.pos_embed.shape[-1] if len(blocks) else 4.0,
                    model.class_num, distilled=getattr(model, "distilled", False))
