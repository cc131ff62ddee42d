"""Paddle's own stage-2 sharding classes (GroupShardedOptimizerStage2, GroupShardedStage2) on CPU
processes, trained through our step, loss scaler, checkpoint gather and restore; or our CPU
emulation of them (deit/sharding.EmulatedStage2), to compare. Run by tests/e2e/test_sharding.py
under paddle.distributed.launch (2 gloo processes):

    python stage2_on_cpu.py ROOT real|emulated fp32|o2|o2_float16 OUT [ACCUM_STEPS]

The classes assert a GPU and place buffers there; these shims let them build on the CPU,
changing only where memory lives, never what is computed:
- while they are built, `paddle.get_device()` says gpu:0, `core.is_compiled_with_cuda()` True,
  and `Tensor.cpu()` copies (as it does from a GPU: Paddle clears the parameter after it);
- their `device_guard` (set_device around a block) does nothing, `cvt_to_device` returns its input.
- float16 reduces sum in fp32 and round once (gloo sums float16 to inf; NCCL rounds once too).
What stays untested is what a GPU adds: NCCL itself and GPU memory.

Each rank trains 3 steps, saves the whole optimizer state (gathered) and the weights files'
weights, trains 2 more; then a fresh model and optimizer restore the checkpoint and train the
same 2 steps; ACCUM_STEPS splits each batch of 8 into micro-batches (no no_sync in stage 2: each
backward reduces, the owner's gradient accumulates). Writes OUT/{mode}_{precision}_{accum}_{rank}.json
and, on rank 0, OUT/{mode}_{precision}_{accum}_ckpt.pkl.
"""
import contextlib
import json
import pickle
import sys

import numpy as np


@contextlib.contextmanager
def _nothing(*args, **kwargs):
    yield


def shim_device_placement():
    import paddle.distributed.fleet.meta_parallel.sharding.group_sharded_optimizer_stage2 as optimizer_stage2
    import paddle.distributed.fleet.meta_parallel.sharding.group_sharded_stage2 as stage2
    import paddle.distributed.fleet.meta_parallel.sharding.group_sharded_storage as storage
    import paddle.distributed.fleet.meta_parallel.sharding.group_sharded_utils as utils
    for module in (optimizer_stage2, stage2, storage, utils):
        if hasattr(module, "device_guard"):
            module.device_guard = _nothing
    storage.cvt_to_device = lambda x, dev_id, blocking=True: x


def float16_sums_in_fp32():
    """gloo sums float16 to inf; NCCL adds float16 through fp32 and rounds once, which for two
    ranks is the same as an fp32 sum rounded: so the reduce does that."""
    import paddle
    import paddle.distributed as dist
    reduce = dist.reduce

    def fp32_reduce(tensor, dst, *args, **kwargs):
        if tensor.dtype != paddle.float16:
            return reduce(tensor, dst, *args, **kwargs)
        wide = tensor.astype("float32")
        task = reduce(wide, dst, *args, **kwargs)
        tensor.copy_(wide.astype(tensor.dtype), False)
        return task
    dist.reduce = fp32_reduce


@contextlib.contextmanager
def built_as_on_a_gpu():
    import paddle
    from paddle.framework import core
    saved = (paddle.get_device, core.is_compiled_with_cuda, paddle.Tensor.cpu)
    paddle.get_device = lambda: "gpu:0"
    core.is_compiled_with_cuda = lambda: True
    paddle.Tensor.cpu = lambda self: self.clone()
    try:
        yield
    finally:
        paddle.get_device, core.is_compiled_with_cuda, paddle.Tensor.cpu = saved


def main(root, mode, precision_name, out, accum_steps="1"):
    sys.path.insert(0, root)
    import paddle
    import paddle.distributed as dist

    import hooks.checkpoint_state as checkpoint_state
    from deit.build.parallel import gathered_fp32_weights
    from deit.cast_on_cpu import cast_like_gpu
    from deit.model import VisionTransformer
    from deit.precision import DynamicLossScaler, Precision
    from deit.sharding import EmulatedStage2, shard_with_paddle
    from deit.step import make_train_step

    shim_device_placement()
    float16_sums_in_fp32()
    dist.init_parallel_env()
    rank = dist.get_rank()

    def build():
        paddle.seed(0)
        model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_num=10)
        optimizer = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), weight_decay=0.05,
                                           multi_precision=precision_name != "fp32")
        precision = Precision()
        if precision_name != "fp32":   # o2: bfloat16; o2_float16: float16 with LayerNorm fp32
            model, optimizer = cast_like_gpu(model, optimizer, "float16" if precision_name == "o2_float16"
                                             else "bfloat16")
        if precision_name != "o2":     # the float16 loss scaler (O1 and O2 float16): found-inf or-ed
            precision.scaler = DynamicLossScaler(init_loss_scaling=1024.0, any_rank=True)
        if mode == "real":
            with built_as_on_a_gpu():
                train_model, optimizer = shard_with_paddle(model, optimizer)
        else:
            train_model, optimizer = model, EmulatedStage2(optimizer, 2, rank)
        loss = lambda logits, y: paddle.nn.functional.cross_entropy(logits, y)  # noqa: E731
        return model, optimizer, make_train_step(train_model, loss, optimizer, precision, int(accum_steps))

    rng = np.random.RandomState(rank)
    data = [(paddle.to_tensor(rng.rand(8, 3, 32, 32).astype("float32")), paddle.to_tensor(rng.randint(0, 10, [8])))
            for _ in range(5)]
    model, optimizer, step = build()
    for batch in data[:3]:
        step(batch)
    contents = checkpoint_state.CheckpointContents(model, optimizer, owners=dict(optimizer.param2rank),
                                                   weights=lambda: gathered_fp32_weights(model, optimizer))
    state, weights = contents.optimizer_state(), contents.file_weights()   # collectives: every rank
    saved_model = {k: v.numpy() for k, v in model.state_dict().items()}
    path = f"{out}/{mode}_{precision_name}_{accum_steps}_ckpt.pkl"
    if rank == 0:
        with open(path, "wb") as f:
            pickle.dump({"optimizer": state, "model": saved_model,
                         "weights": {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                                     for k, v in weights.items()}}, f)
    dist.barrier()
    for batch in data[3:]:
        step(batch)
    whole = {n: p.astype("float32").numpy() for n, p in model.named_parameters()}

    with open(path, "rb") as f:
        saved = pickle.load(f)
    model2, optimizer2, step2 = build()

    class Engine:
        def load_state_dict(self, state):
            pass
    checkpoint_state.set_rng_state = lambda rng: None
    checkpoint_state.restore({"engine": {}, "model": saved["model"], "optimizer": saved["optimizer"], "rng": None},
                             Engine(), model2, optimizer2, rank, 2, "", dict(optimizer2.param2rank))
    for batch in data[3:]:
        step2(batch)
    resumed = {n: p.astype("float32").numpy() for n, p in model2.named_parameters()}
    own_state = [k for k in optimizer.state_dict() if not isinstance(optimizer.state_dict()[k], dict)]
    with open(f"{out}/{mode}_{precision_name}_{accum_steps}_{rank}.json", "w") as f:
        json.dump({"resume_exact": all(np.array_equal(whole[k], resumed[k]) for k in whole),
                   "weights": {k: v.tolist() for k, v in whole.items()},
                   "own_state_keys": sorted(own_state),
                   "owners": {n: optimizer.param2rank[p.name] for n, p in model.named_parameters()}}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
