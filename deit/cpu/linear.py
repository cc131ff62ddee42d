"""A CPU training path for nn.Linear that keeps the bias inside GEMMs, swapped in by the wiring.

Paddle's CPU `x @ W + b` adds the bias in a separate broadcast pass and its backward sums the
output gradient over rows with a slow column reduction; `addmm` adds the bias inside the GEMM,
and `ones @ grad` is the same sum on the GEMM path (bench/NOTES.md, "Bias gradient as a GEMM",
has the timings).
The model is built with nn.Linear; `use_gemm_bias(model)` turns its Linear layers into this
subclass for fp32 training on CPU (same parameters and state_dict). Without grad (evaluation)
or in a static graph (export) a swapped layer takes nn.Linear's own path.
"""
import paddle
import paddle.nn as nn
from paddle.autograd import PyLayer

from .pylayer_grads import remember_wanted


class _LinearBiasByGemm(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        remember_wanted(ctx, x, weight, bias)
        fan_in, fan_out = weight.shape
        # addmm adds the bias inside the GEMM; a separate broadcast add costs a third as much
        # again as the GEMM itself on CPU
        out = paddle.addmm(bias.unsqueeze(0), x.reshape([-1, fan_in]), weight)
        return out.reshape(x.shape[:-1] + [fan_out])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensor()
        fan_in, fan_out = weight.shape
        rows = grad.reshape([-1, fan_out])
        want_x, want_w, want_b = ctx.wanted
        grad_x = paddle.matmul(grad, weight, transpose_y=True) if want_x else None
        grad_w = paddle.matmul(x.reshape([-1, fan_in]), rows, transpose_x=True) if want_w else None
        grad_b = paddle.matmul(paddle.ones([1, rows.shape[0]], rows.dtype), rows).reshape([fan_out]) if want_b else None
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    def forward(self, x):
        if paddle.is_grad_enabled() and paddle.in_dynamic_mode() and not self.weight.stop_gradient:
            return _LinearBiasByGemm.apply(x, self.weight, self.bias)
        return super().forward(x)


def use_gemm_bias(model: nn.Layer) -> nn.Layer:
    """Swap every nn.Linear with a bias in `model` for the CPU path above, in place. Only for
    fp32 training on CPU: the device and dtype are the caller's to know, not checked per call."""
    for layer in model.sublayers(include_self=True):
        if type(layer) is nn.Linear and layer.bias is not None:
            layer.__class__ = Linear
    return model
