"""FP16.level O2 on the CPU as a GPU runs it (`FP16.cast_on_cpu: true`), so the low-precision
path can be tested on a machine without a GPU.

On the CPU `paddle.amp.decorate` returns before casting anything and autocast does nothing,
so an O2 run there is an fp32 run. This mode casts for real, with the function `decorate`
calls on a GPU (`amp_initialize`: float16 with LayerNorm kept fp32, or bfloat16 throughout),
and gives the optimizer fp32 master weights as `decorate` does. Paddle's CPU build has no
float16/bfloat16 kernels for matmul, conv2d, add, layer_norm, softmax, gelu, cross_entropy,
mean, adamw, check_finite_and_unscale, update_loss_scaling or squared_l2_norm (cast,
isfinite, dropout, concat and split it has: tests/deit/test_cast_on_cpu.py lists them), so
those kernels are stood in for by their fp32 arithmetic, rounded where a GPU's would round:

- each layer computes from fp32 copies of its low-precision parameters; its inputs and its
  output are rounded to the low dtype, the activations a GPU's O2 kernels read and write
  (the elementwise ops between layers run in fp32 and round at the next layer's input);
- gradients reach the parameters in their own dtype (float16 or bfloat16, fp32 for the
  LayerNorms float16 keeps), as on a GPU;
- AdamW updates the fp32 master weight with the fp32 kernel and writes it, rounded, into the
  parameter: what the GPU's multi-precision kernel does in one pass.

Everything else is the real path: the loss scaler with mixed-dtype gradients, master weights
in checkpoints and on resume, EMA of the masters, evaluation, the saved weights.
"""
import paddle
from paddle import _C_ops
from paddle.amp.auto_cast import _set_multi_precision, amp_initialize

from .precision import LOW_PRECISION


def cast_like_gpu(model, optimizer, dtype: str):
    """What `paddle.amp.decorate(level='O2', master_weight=True)` does on a GPU, on the CPU,
    with the stand-ins above. Returns (model, optimizer), changed in place."""
    amp_initialize(models=[model], dtype=dtype, excluded_layers=None)
    _set_multi_precision(optimizer, True)
    low = getattr(paddle, dtype)
    for layer in model.sublayers(include_self=True):
        if layer._parameters:
            layer.register_forward_pre_hook(_compute_in_fp32(low))
            layer.register_forward_post_hook(_round_output(low))
    optimizer._append_optimize_op = _master_weight_update(optimizer, optimizer._append_optimize_op)
    return model, optimizer


def _round(value, dtype):
    if isinstance(value, paddle.Tensor) and value.dtype in (paddle.float32,) + LOW_PRECISION:
        return value.astype(dtype).astype("float32")
    if isinstance(value, (tuple, list)):
        return type(value)(_round(v, dtype) for v in value)
    return value


def _compute_in_fp32(dtype):
    def pre_hook(layer, inputs):
        layer._low_precision_parameters = dict(layer._parameters)
        for name, p in layer._low_precision_parameters.items():
            if p is not None and p.dtype in LOW_PRECISION:
                layer._parameters[name] = p.astype("float32")  # differentiable: grads reach p in p's dtype
        return _round(inputs, dtype)
    return pre_hook


def _round_output(dtype):
    def post_hook(layer, inputs, output):
        layer._parameters.update(layer._low_precision_parameters)
        return _round(output, dtype)
    return post_hook


def _master_weight_update(optimizer, update):
    """AdamW's step for a low-precision parameter: the fp32 kernel on its master weight, with
    the parameter's own moments, learning rate and decay choice, then the parameter = the
    master rounded. Other parameters take Paddle's own update."""
    def append_optimize_op(block, param_and_grad):
        param, grad = param_and_grad
        if param.dtype not in LOW_PRECISION:
            return update(block, param_and_grad)
        master = optimizer._master_weights[param.name]

        def accumulator(name):
            return optimizer._get_accumulator_master(name, param)

        decays = optimizer._apply_decay_param_fun is None or optimizer._apply_decay_param_fun(param.name)
        amsgrad = getattr(optimizer, "_amsgrad", False)
        _C_ops.adamw_(master, grad.astype("float32"), optimizer._create_param_lr(param_and_grad),
                      accumulator(optimizer._moment1_acc_str), accumulator(optimizer._moment2_acc_str),
                      accumulator(optimizer._moment2_acc_max_str) if amsgrad else None,
                      accumulator(optimizer._beta1_pow_acc_str), accumulator(optimizer._beta2_pow_acc_str),
                      None, None, optimizer._beta1, optimizer._beta2, optimizer._epsilon, 1.0,
                      optimizer._weight_decay, decays, optimizer._lazy_mode, 1000, False, False, amsgrad)
        param.copy_(master.astype(param.dtype), False)
        return None
    return append_optimize_op
