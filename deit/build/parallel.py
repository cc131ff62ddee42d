"""DistributedStrategy: how the model trains across the processes of a launch. Data parallel
(every rank holds everything and all-reduces the gradients), or PLSC's `data_sharding`
(deit/sharding.py: each rank keeps the optimizer's state of its share of the parameters)."""
from typing import Dict, Optional, Tuple

import paddle

from engine import dist

from ..errors import SetupError
from ..precision import as_fp32
from ..sharding import EmulatedStage2, shard_with_paddle


def build_parallel(cfg, model, optimizer, precision) -> Tuple[object, object, Optional[Dict[str, int]]]:
    """Returns (the model the step trains, the optimizer, the sharding owners or None). The
    model and the optimizer's parameters stay `model`'s: evaluation, EMA and the weights files
    read them whatever the strategy."""
    strategy, world = cfg["DistributedStrategy"], dist.world_size()
    if world > 1 and not (strategy["data_parallel"] or strategy["data_sharding"]):
        raise SetupError("DistributedStrategy.data_parallel and data_sharding are both false, but a launch of "
                         "several processes trains with one of them: set data_parallel (or data_sharding) to true")
    if not strategy["data_sharding"]:
        return (paddle.DataParallel(model) if world > 1 else model), optimizer, None
    refuse_sharding(cfg)
    if world == 1:
        print("note: DistributedStrategy.data_sharding: one process holds the whole optimizer state anyway; "
              "training unsharded")
        return model, optimizer, None
    if cfg["Global"]["device"] == "cpu":
        optimizer = EmulatedStage2(optimizer, world, dist.rank())
        train_model = model
    else:
        train_model, optimizer = shard_with_paddle(model, optimizer)
    if precision.scaler is not None:
        precision.scaler.any_rank = True  # each rank sees only its own parameters' gradients
    return train_model, optimizer, dict(optimizer.param2rank)


def refuse_sharding(cfg) -> None:
    """What data_sharding cannot run with, each in one line."""
    strategy, global_cfg = cfg["DistributedStrategy"], cfg["Global"]
    if global_cfg["device"] == "cpu" and not strategy["sharding_on_cpu"]:
        raise SetupError("DistributedStrategy.data_sharding: Paddle's group sharding runs on GPUs (and XPUs) only, "
                         "and Global.device is cpu: set -o DistributedStrategy.data_sharding=false (data parallel), "
                         "or -o DistributedStrategy.sharding_on_cpu=true to rehearse it with plain collectives")
    if cfg["FP16"]["level"] == "O2" and cfg["EMA"]["decay"] > 0:
        raise SetupError("DistributedStrategy.data_sharding with FP16.level O2 and EMA: stage-2 sharding keeps each "
                         "fp32 master weight on its owner rank only, and EMA averages every master at every step: "
                         "set -o EMA.decay=0, or use -o FP16.level=O1 or data parallel")


def gathered_fp32_weights(model, optimizer) -> Optional[dict]:
    """fp32_weights under sharding: each O2 master weight lives on its owner rank, so every rank
    sends its own (every rank calls this at once); rank 0 gets the weights, the others None."""
    masters = getattr(optimizer, "_optim", optimizer)._master_weights
    own = {name: masters[p.name] for name, p in model.named_parameters() if p.name in masters}
    gathered = dist.gather_shards(own)
    if gathered is None:
        return None
    return as_fp32({name: paddle.to_tensor(gathered[name]) if name in gathered else value
                    for name, value in model.state_dict().items()})

