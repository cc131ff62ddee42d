"""Train or evaluate a DeiT / ViT classifier from a PLSC-style YAML config.

    python run.py --config configs/demo.yaml [-o Section.key=value ...] [--eval|--export|--predict|--dry-run]
    python run.py plot OUTPUT_DIR          # PNG curves from OUTPUT_DIR/metrics.jsonl
"""
MODES = """modes:
  %(prog)s -c CONFIG [-o KEY=VALUE ...]            train (resume with -o Global.checkpoint=auto)
  %(prog)s -c CONFIG --eval [-o ...]               evaluate Global.pretrained_model or Global.checkpoint
  %(prog)s -c CONFIG --export [-o ...]             export an inference model
  %(prog)s -c CONFIG --predict -o Infer.infer_imgs=PATH [-o ...]
                                                   top-k classes of images (eager or exported model)
  %(prog)s -c CONFIG --dry-run [-o ...]            build everything, print the hooks, do not train
  %(prog)s plot OUTPUT_DIR                         PNG curves from OUTPUT_DIR/metrics.jsonl
  %(prog)s launch LAUNCH_ARGS -- -c CONFIG [...]   paddle.distributed.launch, supervised: a node
                                                   that never joins ends it with one line
"""
import argparse
import contextlib
import io
import os
import signal
import sys
import warnings


def _early_setting(config_path, overrides, key: str, default):
    """A Global setting needed before Paddle loads, from -o (last wins) or else the config file.
    A config that does not parse is reported later by load_config."""
    given = [a.split("=", 1)[1] for a in overrides if a.startswith(f"Global.{key}=")]
    if given:
        return given[-1].strip()
    try:  # not engine.config: importing the engine imports Paddle, which must come after this
        import yaml
        with open(config_path, "rb") as f:
            text = f.read((1 << 20) + 1)
        if len(text) > 1 << 20:
            return str(default)  # load_config refuses it with the reason
        cfg = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # aliases stay shared
        return str(((cfg or {}).get("Global") or {}).get(key, default)).strip()
    except Exception:  # noqa: BLE001 - load_config gives the real message
        return str(default)


def _set_threads(config_path, overrides) -> bool:
    """Paddle reads OMP_NUM_THREADS and MKL's CPU dispatch when it is first imported, so this
    runs before any Paddle import. Only for Global.device cpu: Global.num_threads wins, 0 means
    all cores. A GPU run keeps the user's environment (all cores for each of 8 ranks and their
    loader workers would oversubscribe the machine). Returns whether it tuned the CPU."""
    if _early_setting(config_path, overrides, "device", "cpu") != "cpu":
        return False
    from deit.cpu.env import configure_cpu_math
    wanted = _early_setting(config_path, overrides, "num_threads", 0)
    configure_cpu_math(int(wanted) if wanted.isdigit() else 0)
    return True


def _import_paddle_quietly(cpu_tuned: bool) -> None:
    """Paddle warns about ccache on import, and to stderr whenever OMP_NUM_THREADS > 1 under
    data parallel; on a CPU run we set the threads on purpose, so that one is noise there. A GPU
    run keeps it: there the user's OMP_NUM_THREADS is theirs to hear about."""
    warnings.filterwarnings("ignore", message="No ccache found")
    quiet = contextlib.redirect_stderr(io.StringIO()) if cpu_tuned else contextlib.nullcontext()
    # Paddle turns any exception inside its import, a Ctrl-C's KeyboardInterrupt too, into
    # ImportError("initialization failed"): hold a Ctrl-C until the import is over
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        with quiet:
            import paddle  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def _prog() -> str:
    """The name this program was called by: run.py, deit-train or deit-eval."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "run.py"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=_prog(), description=__doc__.splitlines()[0], epilog=MODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="YAML config (PLSC layout)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value",
                   help="override a config value (repeatable); values are parsed as YAML")
    p.add_argument("--eval", action="store_true", help="evaluate Global.pretrained_model (or "
                   "Global.checkpoint) on DataLoader.Eval and exit")
    p.add_argument("--export", action="store_true", help="export Global.pretrained_model as a "
                   "Paddle inference model (Export.input_shape) to Export.save_path or "
                   "OUTPUT_DIR/inference")
    p.add_argument("--predict", action="store_true", help="classify Infer.infer_imgs (an image, a "
                   "folder or a .txt list) with Global.pretrained_model, Global.checkpoint, or the "
                   "exported Infer.inference_model through Paddle Inference")
    p.add_argument("--dry-run", action="store_true", help="build everything, print the hooks per "
                   "event in firing order, and exit without training")
    return p.parse_args(argv)


def main(argv=None, force_eval: bool = False) -> int:
    try:
        return _main(argv, force_eval)
    except KeyboardInterrupt:  # before training (which handles its own): nothing to save yet
        print("stopped by Ctrl-C before training started", file=sys.stderr)
        return 130


def _main(argv, force_eval: bool) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:
        return _plot(argv[1:])
    if argv[:1] == ["launch"]:
        return _launch(argv[1:])
    args = parse_args(argv)
    from configs import find_config
    args.config = find_config(args.config)  # a path, or the name of a bundled config
    cpu_tuned = _set_threads(args.config, args.override)
    try:
        _import_paddle_quietly(cpu_tuned)
    except ImportError as exc:
        print(f"error: PaddlePaddle cannot be imported ({exc}): install the CPU wheel with "
              f"pip install paddlepaddle (or this package's [cpu] extra), or for GPUs the "
              f"paddlepaddle-gpu wheel built for your CUDA version", file=sys.stderr)
        return 2
    from engine.config import load_config
    from engine.errors import UserError
    from deit.build.schema import SCHEMA
    try:
        cfg = load_config(args.config, args.override, SCHEMA)
        if args.eval or force_eval:
            return _evaluate(cfg)
        if args.export:
            return _export(cfg)
        if args.predict:
            return _predict(cfg)
        return _train(cfg, args.dry_run)
    except UserError as exc:  # ConfigError, SetupError, DataError, CheckpointError...
        print(f"error: {exc}", file=sys.stderr)
        return 2


def eval_main(argv=None) -> int:
    return main(argv, force_eval=True)


def _train(cfg, dry_run: bool) -> int:
    from deit.build.summary import describe_run
    from deit.build.training import build_training
    from engine import dist
    training = build_training(cfg)
    summary = describe_run(cfg, training) if dist.is_main() else ""
    if dry_run:
        print(summary)
        print(training.engine.describe())
        return 0
    with training.run_dir:  # rank 0 holds output_dir/run.lock until the run ends
        resumed = dist.agreed(lambda: _start(training, cfg["Global"]["checkpoint"]))
        with training.train_log.copying_output(" ".join(sys.argv)):  # from here on, rank 0 prints to train.log too
            return _run(cfg, training, resumed, summary)


def _run(cfg, training, resumed, summary) -> int:
    import yaml
    from engine import dist
    from engine.errors import UserError
    from hooks.stop_on_signal import Interrupted
    engine, state, run_dir = training.engine, training.engine.state, training.run_dir
    complete = resumed is not None and state.epoch >= state.max_epochs and state.epoch_ended
    if dist.is_main():
        print(summary, flush=True)
        if resumed is not None:
            print(f"resumed from {resumed.path} at epoch {state.epoch}, iteration {state.iteration}")
            if resumed.changes:
                print(f"resume: config changed since {os.path.basename(resumed.path)}: " +
                      "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in resumed.changes.items()))
            if resumed.text:
                print(resumed.text, flush=True)
            if complete:
                print(f"the run in {run_dir.path} is complete ({state.epoch} of {state.max_epochs} epochs): "
                      f"raise Global.epochs to train longer, or start over in another Global.output_dir")
    if complete:  # nothing to train: no empty "done" summary, no file rewritten...
        # ...but a run stopped between its last checkpoint and final.pdparams gets it now (every
        # rank takes part: under sharding the weights come from every rank)
        if dist.any_rank(dist.is_main() and not os.path.isfile(run_dir.file("final.pdparams"))):
            try:
                training.checkpoint.completed(engine)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if dist.is_main():
                print(f"wrote {run_dir.file('final.pdparams')}, which the run had not written before it stopped")
        return 0
    try:
        if dist.is_main():
            run_dir.write_config(yaml.safe_dump(cfg, sort_keys=False))
        engine.run()
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"stopped without saving; latest.txt in {run_dir.path} names the newest complete "
              f"checkpoint: resume with -o Global.checkpoint=auto", file=sys.stderr)
        return 130
    except UserError as exc:  # printed here, so that train.log has it too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SystemError, OSError) as exc:  # inside a backward (a PyLayer's), Paddle wraps it in OSError
        worker = _dead_worker(exc)
        if worker is None:
            raise
        print(f"error: rank {dist.rank()}: data loader worker (pid {worker[0]}) was killed by signal "
              f"{worker[1]}{' (the out-of-memory killer sends SIGKILL)' if worker[1] == 'SIGKILL' else ''}; "
              f"latest.txt in {run_dir.path} names the newest complete checkpoint: resume with "
              f"-o Global.checkpoint=auto, and lower DataLoader.Train.loader.num_workers or the memory "
              f"the run uses", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not dist.is_peer_failure(exc):
            raise
        print(f"error: rank {dist.rank()}: a collective failed because another process of this launch "
              f"died or is unreachable ({str(exc).splitlines()[0]}); see that rank's workerlog. "
              f"Nothing was saved after the failure: resume with -o Global.checkpoint=auto", file=sys.stderr)
        return 1
    return 0


def _dead_worker(exc: BaseException):
    """(pid, signal name) from Paddle's "DataLoader process (pid N) exited is killed by signal:
    Killed", raised in the trainer by its SIGCHLD handler when a worker dies on its own: a
    SystemError, or an OSError quoting it when the handler ran inside a backward pass; else None."""
    import re
    import signal
    found = re.search(r"DataLoader process \(pid (\d+)\) exited is killed by signal: ?([\w ]+)", str(exc))
    if found is None:
        return None
    names = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}
    return found.group(1), names.get(found.group(2).strip(), found.group(2).strip())


def _start(training, value):
    """Everything that may refuse the run before it writes: resume (or not), then disk space.
    Returns what the resume found (engine.Resumed), or None for a fresh start."""
    from hooks.disk_space import check_space
    resumed = training.resumer.resume(training.engine, value)
    check_space(training.run_dir, training.engine.model, training.engine, training.checkpoint.keep)
    return resumed


def _plot(argv) -> int:
    from engine.errors import UserError
    p = argparse.ArgumentParser(prog=f"{_prog()} plot", description="PNG curves of loss, lr, "
                                "top-1/5 and img/s from OUTPUT_DIR/metrics.jsonl, written to "
                                "OUTPUT_DIR/curves.png (needs matplotlib)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    from deit.plot import plot_run
    try:
        print(f"wrote {plot_run(args.output_dir)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _launch(argv) -> int:
    """`launch --nnodes 2 --master IP:PORT --nproc_per_node 8 [...] -- -c CONFIG [-o ...]`."""
    asked = argv[:1] in (["-h"], ["--help"])
    if "--" not in argv or asked:
        from engine.launch import CONNECT_TIMEOUT_S
        print(f"usage: {_prog()} launch [paddle.distributed.launch options] -- -c CONFIG [-o KEY=VALUE ...]\n"
              f"runs this program under paddle.distributed.launch; if no worker has started after "
              f"DEIT_CONNECT_TIMEOUT seconds (default {CONNECT_TIMEOUT_S}: a node that never joined), it stops "
              f"the launch with one line", file=sys.stdout if asked else sys.stderr)
        if asked:
            print("\n" + _launcher_options())
        return 0 if asked else 2
    from engine.launch import supervised_launch
    cut = argv.index("--")
    return supervised_launch(argv[:cut], os.path.abspath(__file__), argv[cut + 1:])


def _launcher_options() -> str:
    """paddle.distributed.launch's own option list (its --help from "options:" on), so that
    `launch --help` shows what goes before the `--`."""
    import subprocess
    try:
        result = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--help"],
                                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(paddle.distributed.launch --help could not run: {exc})"
    text = result.stdout
    return "paddle.distributed.launch " + text[text.find("options:"):] if "options:" in text else text


def _export(cfg) -> int:
    from deit.build.components import build_model
    from deit.build.runtime import setup_runtime
    from deit.build.weights import load_pretrained
    from deit.errors import SetupError, paddle_message
    from deit.inference.export import export_inference, export_onnx, import_paddle2onnx
    weights, export_cfg = cfg["Global"]["pretrained_model"], cfg["Export"]
    if not weights:
        raise SetupError("--export needs weights: set -o Global.pretrained_model=PATH_PREFIX")
    onnx = export_cfg["export_type"] == "onnx"
    if onnx:  # refused before any file is written
        try:
            import_paddle2onnx()
        except ImportError as exc:
            raise SetupError(str(exc)) from None
    setup_runtime(cfg)
    model = build_model(cfg["Model"])
    load_pretrained(model, weights)
    dest = cfg["Export"]["save_path"] or os.path.join(cfg["Global"]["output_dir"], "inference")
    shape = cfg["Export"]["input_shape"] or [None, 3, model.img_size, model.img_size]
    if len(shape) != 4 or shape[1:] != [3, model.img_size, model.img_size]:
        raise SetupError(f"Export.input_shape={shape} does not fit the model, which takes "
                         f"[N, 3, {model.img_size}, {model.img_size}]: leave Export.input_shape unset "
                         f"to take the model's")
    try:
        export_inference(model, shape, dest)
        if onnx:
            export_onnx(dest, dest + ".onnx", export_cfg["opset_version"])
    except Exception as exc:  # noqa: BLE001 - tracing, converting or writing: one line, the cause kept
        raise SetupError(f"--export to {dest} failed: {type(exc).__name__}: {paddle_message(exc)}") from None
    print(f"exported {weights} to {dest}.json / {dest}.pdiparams (input {shape})")
    if onnx:
        print(f"exported {dest}.onnx (ONNX opset {export_cfg['opset_version']}, batch dimension free)")
    return 0


def _evaluate(cfg) -> int:
    from rich.console import Console
    from rich.table import Table
    from deit.build.components import build_evaluation, build_model
    from deit.build.inference import model_for_inference
    from deit.build.runtime import setup_runtime
    from deit.build.weights import load_trained_weights
    from engine import dist
    setup_runtime(cfg)
    evaluation = build_evaluation(cfg)
    model = build_model(cfg["Model"])
    weights = load_trained_weights(cfg, model, "--eval")
    model, backend = model_for_inference(cfg, model)
    metrics = evaluation(model)
    if dist.is_main():
        print(f"eval: top1={metrics['top1']:.6f} top5={metrics.get('top5', float('nan')):.6f} "
              f"loss={metrics['loss']:.6f} images={metrics['count']} devices={dist.world_size()} weights={weights} "
              f"backend={backend}")
        if sys.stdout.isatty():  # the line above is for logs and scripts; the table for a person
            table = Table(title="Evaluation")  # a long weights path goes in a row, folded, not in the title
            table.add_column("", no_wrap=True)
            table.add_column("", overflow="fold")
            for key in ("top1", "top5", "loss", "count"):
                if key in metrics:
                    table.add_row(key, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
            table.add_row("weights", str(weights))
            table.add_row("backend", backend)
            Console().print(table)
    return 0


def _predict(cfg) -> int:
    """Top-k classes per image: a table (or JSON lines with Infer.format=jsonl) on stdout, and
    JSON lines in Infer.save_path when set. Exit 1 when some image could not be read."""
    import json
    from deit.build.inference import build_predictor
    from deit.inference.predict import predict
    from engine.files import atomic_write_text
    infer = cfg["Infer"]
    runner, weights, transform, files, names = build_predictor(cfg)
    records = list(predict(files, transform, runner, infer["batch_size"], infer["PostProcess"]["topk"], names))
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if infer["format"] == "jsonl":
        print("\n".join(lines))
    else:
        _print_predictions(records, f"{len(files)} image(s), {weights} ({runner.name})")
    if infer["save_path"]:
        os.makedirs(os.path.dirname(os.path.abspath(infer["save_path"])), exist_ok=True)
        atomic_write_text(infer["save_path"], "".join(line + "\n" for line in lines))
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"warning: {r['file_name']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _print_predictions(records, title) -> None:
    from rich.console import Console
    from rich.table import Table
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(r["file_name"])) for r in records])
    table = Table(title=f"{title}\nin {folder}")
    for column in ("image", "top-1", "score", "top-k"):
        table.add_column(column, overflow="fold")
    for r in records:
        shown_path = os.path.relpath(os.path.abspath(r["file_name"]), folder)
        if "error" in r:
            table.add_row(shown_path, "-", "-", r["error"])
            continue
        shown = r.get("label_names") or [str(i) for i in r["class_ids"]]
        top_k = ", ".join(f"{name} {score:.3f}" for name, score in zip(shown, r["scores"]))
        table.add_row(shown_path, shown[0], f"{r['scores'][0]:.3f}", top_k)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
