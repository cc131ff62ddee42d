"""GELU, LayerNorm, and attention's softmax and head layouts on the compiled CPU kernels
(deit/cpu/kernels.py), swapped into a built model by the wiring, as deit/cpu/linear.py does
for Linear.

The swapped layers keep their parameters and state_dict keys. They take the kernels in eager
mode on fp32 CPU tensors, with or without grad (training-time evaluation gains too); anything
else (a static graph for export, another dtype or device) takes the layer's own Paddle path.
"""
import paddle
import paddle.nn as nn
from paddle.autograd import PyLayer

from ..model import Attention
from .pylayer_grads import only_wanted, remember_wanted


def _kernel_path(x) -> bool:
    return paddle.in_dynamic_mode() and x.dtype == paddle.float32 and x.place.is_cpu_place()


class _Gelu(PyLayer):
    @staticmethod
    def forward(ctx, x, kernels):
        ctx.kernels = kernels
        ctx.save_for_backward(x)
        return kernels.gelu_forward(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensor()
        return ctx.kernels.gelu_backward(x, dy)


class _LayerNorm(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, kernels):
        y, mean, rstd = kernels.layer_norm_forward(x, weight, bias, eps)
        remember_wanted(ctx, x, weight, bias)
        ctx.kernels = kernels
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensor()
        return only_wanted(ctx, *ctx.kernels.layer_norm_backward(x, weight, mean, rstd, dy))


class _ScaledSoftmax(PyLayer):
    """softmax(scale * x) over the last axis: attention's scale folded into the softmax."""

    @staticmethod
    def forward(ctx, x, scale, kernels):
        y = kernels.softmax_forward(x, scale)
        ctx.kernels, ctx.scale = kernels, scale
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensor()
        return ctx.kernels.softmax_backward(y, dy, ctx.scale)


class GELU(nn.GELU):
    def forward(self, x):
        if not self._approximate and _kernel_path(x):
            return _Gelu.apply(x, self.cpu_kernels)
        return super().forward(x)


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        if (_kernel_path(x) and len(self._normalized_shape) == 1 and self.weight is not None
                and self.bias is not None):
            return _LayerNorm.apply(x, self.weight, self.bias, float(self._epsilon), self.cpu_kernels)
        return super().forward(x)


class _SplitHeads(PyLayer):
    """qkv [batch, tokens, 3, heads, head_dim] -> q, k, v, each [batch, heads, tokens, head_dim]."""

    @staticmethod
    def forward(ctx, qkv, kernels):
        ctx.kernels = kernels
        return tuple(kernels.tokens_to_heads(qkv))

    @staticmethod
    def backward(ctx, dq, dk, dv):
        return ctx.kernels.heads_to_tokens([dq, dk, dv])


class _MergeHeads(PyLayer):
    """[batch, heads, tokens, head_dim] -> [batch, tokens, heads, head_dim]."""

    @staticmethod
    def forward(ctx, x, kernels):
        ctx.kernels = kernels
        b, h, t, d = x.shape
        return kernels.heads_to_tokens([x]).reshape([b, t, h, d])

    @staticmethod
    def backward(ctx, dy):
        b, t, h, d = dy.shape
        return ctx.kernels.tokens_to_heads(dy.reshape([b, t, 1, h, d]))[0]


class CpuAttention(Attention):
    """The math of Paddle's CPU scaled_dot_product_attention (q k^T, softmax, @ v), with the
    layout changes in one pass each and the scale inside the softmax kernel."""

    def attend(self, qkv):
        if (self.attn_drop and self.training) or not _kernel_path(qkv):
            return super().attend(qkv)
        b, n, width = qkv.shape
        h = self.num_heads
        q, k, v = _SplitHeads.apply(qkv.reshape([b, n, 3, h, width // (3 * h)]), self.cpu_kernels)
        weights = _ScaledSoftmax.apply(paddle.matmul(q, k, transpose_y=True), q.shape[-1] ** -0.5,
                                       self.cpu_kernels)
        return _MergeHeads.apply(paddle.matmul(weights, v), self.cpu_kernels).reshape([b, n, width // 3])


SWAPS = {nn.GELU: GELU, nn.LayerNorm: LayerNorm, Attention: CpuAttention}


def use_cpu_kernels(model: nn.Layer, kernels) -> nn.Layer:
    """Swap the model's GELU, LayerNorm and Attention layers for the kernel versions, in place.
    For fp32 on CPU; the caller knows the device and dtype."""
    for layer in model.sublayers(include_self=True):
        swap = SWAPS.get(type(layer))
        if swap is not None:
            layer.__class__ = swap
            layer.cpu_kernels = kernels
    return model
