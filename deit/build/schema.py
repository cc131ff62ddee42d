"""The config layout: PLSC's sections and keys, plus ours, with defaults and bounds.

Plain data read by `engine.config.validate`: leaves are `(kind, default)` or `(kind, default,
bound)`. Keys marked "ours" are not in PLSC; everything PLSC's DeiT configs use is accepted
unchanged. Op lists (`transform_ops`, `batch_transform_ops`, losses, metrics) name their ops'
arguments here too, so a wrong type or range is one line naming the `-o` key; an argument left
out keeps the op's own default.
"""

_INTERPOLATION = (("bicubic", "bilinear", "nearest", "lanczos"), "bicubic")
_UNIT = ("float", 0.0, "[0,1]")

TRANSFORM_OPS = {
    "DecodeImage": {"to_rgb": ("bool", True), "channel_first": ("bool", False)},
    "RandCropImage": {"size": ("size", None, ">=1"), "scale": ("float2", None, "(0,1]"),
                      "ratio": ("float2", None, ">0"), "interpolation": _INTERPOLATION,
                      "backend": (("pil",), "pil")},
    "RandFlipImage": {"flip_code": ("int", 1), "prob": _UNIT},
    "ResizeImage": {"resize_short": ("int", None, ">=1"), "size": ("size?", None, ">=1"),
                    "interpolation": _INTERPOLATION, "backend": (("pil",), "pil")},
    "CenterCropImage": {"size": ("size", None, ">=1")},
    "NormalizeImage": {"scale": ("float", None, ">0"), "mean": ("floats", None), "std": ("floats", None, ">0"),
                       "order": (("", "hwc"), "")},
    "RandomErasing": {"EPSILON": _UNIT, "sl": _UNIT, "sh": _UNIT, "r1": ("float", None, "(0,1]"),
                      "attempt": ("int", None, ">=1"), "use_log_aspect": ("bool", True),
                      "mode": (("pixel",), "pixel")},
    "TimmAutoAugment": {"config_str": ("str", None), "interpolation": _INTERPOLATION,
                        "img_size": ("int", None, ">=1"), "mean": ("floats", None, "[0,1]")},
    "ToCHWImage": {},
}

_MIX = {"alpha": ("float", None, ">=0"), "prob": _UNIT, "epsilon": ("float", None, "[0,1)"),
        "class_num": ("int", None, ">=1")}
BATCH_TRANSFORM_OPS = {"TransformOpSampler": {"Mixup": _MIX, "Cutmix": _MIX}, "Mixup": _MIX, "Cutmix": _MIX}
LOSS_OPS = {"CELoss": {"epsilon": ("float", None, "[0,1)"), "weight": ("float", None, ">0")}}
METRIC_OPS = {"TopkAcc": {"topk": ("ints", None, ">=1")}}

_LOADER = {
    "dataset": {
        "name": (("ImageNetDataset", "ImageFolder", "DemoDataset"), "ImageNetDataset"),
        "image_root": ("str?", None),
        "cls_label_path": ("str?", None),
        "transform_ops": {"*ops": TRANSFORM_OPS},
        "batch_transform_ops": {"*ops": BATCH_TRANSFORM_OPS},
        "max_bad_fraction": ("float", 0.01, "[0,1]"),   # ours: stop if more files are unreadable
    },
    "sampler": {
        "name": (("RepeatedAugSampler", "DistributedBatchSampler", "BatchSampler"),
                 "DistributedBatchSampler"),
        "batch_size": ("int", 64, ">=1"),
        "drop_last": ("bool", False),
        "shuffle": ("bool", True),
        "num_repeats": ("int", 3, ">=1"),               # ours: RepeatedAugSampler repeats
    },
    "loader": {
        "num_workers": ("int", 0, ">=0"),
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
        "max_num_latest_checkpoint": ("int", 0, ">=-1"),  # PLSC's: 0 only what resume needs, -1 all, N newest N
        "finetune": ("bool", False),                    # PLSC's: pretrained_model starts a new head
        "max_train_step": ("int?", None, ">=1"),        # PLSC's: stop after this many optimizer steps
        "flags": ("dict?", None),                       # PLSC's: paddle.set_flags({...}) at start
        "eval_during_train": ("bool", True),
        "eval_interval": ("int", 1, ">=1"),
        "eval_unit": (("epoch", "step"), "epoch"),
        "accum_steps": ("int", 1, ">=1"),
        "epochs": ("int", 300, ">=1"),
        "print_batch_step": ("int", 10, ">=1"),
        "use_visualdl": ("bool", False),
        "use_tensorboard": ("bool", False),                # ours: curves for TensorBoard (tensorboardX)
        "use_wandb": ("bool", False),                      # ours: curves for Weights & Biases (section WandB)
        "seed": ("int", 42, ">=0"),
        "num_threads": ("int", 0, ">=0"),               # ours: CPU threads, 0 = all cores
        "cpu_kernels": (("auto", "on", "off"), "auto"),  # ours: compiled GELU/LayerNorm/softmax (fp32 CPU)
        "progress": (("auto", "rich", "plain", "off"), "auto"),  # ours
    },
    "FP16": {
        "level": (("O0", "O1", "O2"), "O0"),
        "dtype": (("float16", "bfloat16"), "float16"),  # ours
        "cast_on_cpu": ("bool", False),  # ours: O2 cast for real on the CPU (deit/cast_on_cpu.py)
        "GradScaler": {
            "init_loss_scaling": ("float", 65536.0, ">0"),
            "incr_every_n_steps": ("int", 2000, ">=1"),
            "decr_every_n_nan_or_inf": ("int", 1, ">=1"),
            "incr_ratio": ("float", 2.0, ">1"),
            "decr_ratio": ("float", 0.5, "(0,1)"),
            "use_dynamic_loss_scaling": ("bool", True),
        },
    },
    "DistributedStrategy": {
        "data_parallel": ("bool", True),
        "data_sharding": ("bool", False),     # PLSC's key: the optimizer's state split across ranks
        "sharding_on_cpu": ("bool", False),   # ours: data_sharding emulated on the CPU (deit/sharding.py)
    },
    "Model": {
        "name": ("str", "DeiT_base_patch16_224"),
        "class_num": ("int", 1000, ">=1"),
        "drop_path_rate": ("float", 0.1, "[0,1)"),
        "drop_rate": ("float", 0.0, "[0,1)"),
        "init": (("deit", "plsc"), "deit"),             # ours: official DeiT init or PLSC's
        # the architecture: null takes Model.name's (VisionTransformer: ViT-B/16 at 224 px); set, a
        # named model becomes a variant of it (PLSC refuses these for a named model)
        "img_size": ("int?", None, ">=1"),
        "patch_size": ("int?", None, ">=1"),
        "embed_dim": ("int?", None, ">=1"),
        "depth": ("int?", None, ">=1"),
        "num_heads": ("int?", None, ">=1"),
        "mlp_ratio": ("float?", None, ">0"),
        "qkv_bias": ("bool", True),                     # PLSC's (its DeiT factories: True)
        "epsilon": ("float", 1e-6, ">0"),               # PLSC's: the LayerNorms' epsilon
        "attn_drop_rate": ("float", 0.0, "[0,1)"),      # PLSC's: dropout on the attention weights
        "distilled": ("bool?", None),                   # ours: DeiT's distillation token and head
                                                        # (null: Model.name's; *_distilled_* have them)
        "recompute": ("int", 0, ">=0"),                 # ours: every k-th block recomputed in the
                                                        # backward (1: all, 0: off): activation memory
    },
    "Distillation": {                                   # ours: DeiT's training with a teacher
        "type": (("none", "soft", "hard"), "hard"),     # the official DistillationLoss's
        "alpha": ("float", 0.5, "[0,1]"),               # loss = (1 - alpha) * base + alpha * distillation
        "tau": ("float", 1.0, ">0"),                    # the temperature of `soft`
        "Teacher": {                                    # unset (no inference_model, no name): no teacher
            "inference_model": ("str?", None),          # an exported model's PREFIX (.json/.pdmodel + .pdiparams)
            "name": ("str?", None),                     # or a model: one of ours, or of paddle.vision.models
            "pretrained_model": ("str?", None),         # its weights (.pdparams), with `name`
            "class_num": ("int?", None, ">=1"),         # with `name`: null takes Model.class_num
            "img_size": ("int?", None, ">=1"),          # its input size; null: the student's
            "mean": ("floats?", None, "[0,1]"),         # its normalization; null: the student's
            "std": ("floats?", None, ">0"),
            "interpolation": (("bicubic", "bilinear", "nearest"), "bicubic"),  # resizing to img_size
        },
    },
    "Loss": {"Train": {"*ops": LOSS_OPS}, "Eval": {"*ops": LOSS_OPS}},
    "LRScheduler": {
        "name": (("TimmCosine",), "TimmCosine"),
        "learning_rate": ("float", 1e-3, ">0"),
        "eta_min": ("float", 1e-5, ">=0"),
        "warmup_epoch": ("int", 5, ">=0"),
        "warmup_start_lr": ("float", 1e-6, ">=0"),
        "decay_unit": (("epoch", "step"), "epoch"),
        "scale_by_batch": ("int", 0, ">=0"),            # ours: lr *= global_batch / N (DeiT: 512)
    },
    "Optimizer": {
        "name": (("AdamW",), "AdamW"),
        "betas": ("float2", [0.9, 0.999], "[0,1)"),
        "eps": ("float", 1e-8, ">0"),
        "weight_decay": ("float", 0.05, ">=0"),
        "no_weight_decay_name": ("strs", []),
        "use_master_param": ("bool", False),
        "exp_avg_force_fp32": ("bool", False),
        "grad_clip": ("any", 0.0),                      # a global-norm clip (0 = off), or PLSC's
                                                        # {name: ClipGradByGlobalNorm, clip_norm: N}
    },
    "WandB": {                                          # ours: Global.use_wandb's run
        "project": ("str", "deit-paddle"),
        "name": ("str?", None),                         # null: W&B names the run
        "entity": ("str?", None),                       # null: your default entity
        "mode": (("online", "offline", "disabled", None), None),  # null: W&B's own (WANDB_MODE, login)
    },
    "EarlyStopping": {                                  # ours: Ignite's EarlyStopping
        "patience": ("int", 0, ">=0"),                  # evaluations without improvement; 0 = off
        "min_delta": ("float", 0.0, ">=0"),             # an improvement is more than this
        "metric": (("top1", "top5", "loss", "top1_cls", "top1_dist"), "top1"),
        "mode": (("auto", "max", "min"), "auto"),       # auto: min for loss, max for accuracies
        "evaluation": (("eval", "eval_ema"), "eval"),   # the model's, or the EMA model's
    },
    "EMA": {
        "decay": ("float", 0.0, "[0,1)"),               # 0 = off; official DeiT uses 0.99996
        "thres_steps": ("bool", False),
        "eval_with_ema": ("bool", False),
    },
    "DataLoader": {"Train": _LOADER, "Eval": _LOADER},
    "Metric": {"Train": {"*ops": METRIC_OPS}, "Eval": {"*ops": METRIC_OPS}},
    "Export": {
        "export_type": (("paddle", "onnx"), "paddle"),  # onnx: also PREFIX.onnx (paddle2onnx)
        "opset_version": ("int", 17, ">=7"),            # ours: ONNX opset (17 has LayerNormalization)
        "input_shape": ("list?", None),                 # null: [None, 3, img, img] of the model
        "save_path": ("str?", None),                    # ours
    },
    "Infer": {                                          # PaddleClas's section, for --predict
        "infer_imgs": ("str?", None),                   # an image, a folder or a .txt list
        "batch_size": ("int", 10, ">=1"),
        "transforms": {"*ops": TRANSFORM_OPS},          # empty: DataLoader.Eval's transform_ops
        "PostProcess": {
            "name": (("Topk",), "Topk"),
            "topk": ("int", 5, ">=1"),
            "class_id_map_file": ("str?", None),
        },
        "inference_model": ("str?", None),              # ours: an exported PREFIX (Paddle Inference) or a .onnx (onnxruntime)
        # ours, for --predict and --eval from weights: auto = Paddle Inference on CPU (faster)
        "backend": (("auto", "eager", "paddle_inference"), "auto"),
        "format": (("table", "jsonl"), "table"),        # ours: what --predict prints
        "save_path": ("str?", None),                    # ours: also write JSON lines here
    },
    "Hooks": "ops",
}
