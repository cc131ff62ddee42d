"""The config layout: PLSC's sections and keys, plus ours, with defaults.

Plain data read by `engine.config.validate`: leaves are `(kind, default)`. Keys marked
"ours" are not in PLSC; everything PLSC's DeiT configs use is accepted unchanged.
"""

_LOADER = {
    "dataset": {
        "name": (("ImageNetDataset", "ImageFolder", "DemoDataset"), "ImageNetDataset"),
        "image_root": ("str?", None),
        "cls_label_path": ("str?", None),
        "transform_ops": "ops",
        "batch_transform_ops": "ops",
        "max_bad_fraction": ("float", 0.01),            # ours: stop if more files are unreadable
    },
    "sampler": {
        "name": (("RepeatedAugSampler", "DistributedBatchSampler", "BatchSampler"),
                 "DistributedBatchSampler"),
        "batch_size": ("int", 64),
        "drop_last": ("bool", False),
        "shuffle": ("bool", True),
        "num_repeats": ("int", 3),                      # ours: RepeatedAugSampler repeats
    },
    "loader": {
        "num_workers": ("int", 0),
        "use_shared_memory": ("bool", True),
    },
}

SCHEMA = {
    "Global": {
        "checkpoint": ("str?", None),
        "pretrained_model": ("str?", None),
        "output_dir": ("str", "./output/"),
        "device": (("cpu", "gpu"), "gpu"),
        "save_interval": ("int", 1, ">=1"),
        "save_unit": (("epoch", "step"), "epoch"),      # ours
        "max_num_latest_checkpoint": ("int", 0, ">=0"),   # 0 keeps all
        "eval_during_train": ("bool", True),
        "eval_interval": ("int", 1),
        "eval_unit": (("epoch", "step"), "epoch"),
        "accum_steps": ("int", 1),
        "epochs": ("int", 300),
        "print_batch_step": ("int", 10),
        "use_visualdl": ("bool", False),
        "seed": ("int", 42),
        "num_threads": ("int", 0),                      # ours: CPU threads, 0 = all cores
        "progress": (("auto", "rich", "plain", "off"), "auto"),  # ours
    },
    "FP16": {
        "level": (("O0", "O1", "O2"), "O0"),
        "dtype": (("float16", "bfloat16"), "float16"),  # ours
        "GradScaler": {
            "init_loss_scaling": ("float", 65536.0),
            "incr_every_n_steps": ("int", 2000),
            "decr_every_n_nan_or_inf": ("int", 1),
            "incr_ratio": ("float", 2.0),
            "decr_ratio": ("float", 0.5),
            "use_dynamic_loss_scaling": ("bool", True),
        },
    },
    "DistributedStrategy": {"data_parallel": ("bool", True)},
    "Model": {
        "name": ("str", "DeiT_base_patch16_224"),
        "class_num": ("int", 1000),
        "drop_path_rate": ("float", 0.1),
        "drop_rate": ("float", 0.0),
        "init": (("deit", "plsc"), "deit"),             # ours: official DeiT init or PLSC's
        # ours: the generic constructor (Model.name: VisionTransformer)
        "img_size": ("int", 224),
        "patch_size": ("int", 16),
        "embed_dim": ("int", 768),
        "depth": ("int", 12),
        "num_heads": ("int", 12),
        "mlp_ratio": ("float", 4.0),
    },
    "Loss": {"Train": "ops", "Eval": "ops"},
    "LRScheduler": {
        "name": (("TimmCosine",), "TimmCosine"),
        "learning_rate": ("float", 1e-3),
        "eta_min": ("float", 1e-5),
        "warmup_epoch": ("int", 5),
        "warmup_start_lr": ("float", 1e-6),
        "decay_unit": (("epoch", "step"), "epoch"),
        "scale_by_batch": ("int", 0),                   # ours: lr *= global_batch / N (DeiT: 512)
    },
    "Optimizer": {
        "name": (("AdamW",), "AdamW"),
        "betas": ("float2", [0.9, 0.999]),
        "eps": ("float", 1e-8),
        "weight_decay": ("float", 0.05),
        "no_weight_decay_name": ("list", []),
        "use_master_param": ("bool", False),
        "exp_avg_force_fp32": ("bool", False),
        "grad_clip": ("float", 0.0),                    # ours: global-norm clip (0 = off)
    },
    "EMA": {
        "decay": ("float", 0.0),                        # 0 = off; official DeiT uses 0.99996
        "thres_steps": ("bool", False),
        "eval_with_ema": ("bool", False),
    },
    "DataLoader": {"Train": _LOADER, "Eval": _LOADER},
    "Metric": {"Train": "ops", "Eval": "ops"},
    "Export": {
        "export_type": (("paddle",), "paddle"),
        "input_shape": ("list", [None, 3, 224, 224]),
        "save_path": ("str?", None),                    # ours
    },
    "Hooks": "ops",
}
