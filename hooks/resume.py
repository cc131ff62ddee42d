"""Resuming, with one owner: which checkpoint Global.checkpoint designates in the run directory
(or a refusal that keeps an earlier run's files safe), whether it may continue under this
config, putting it back, and what the run is told (`engine.state.resumed`, then RESUMED).

run.py calls `Resumer.resume` once, before anything is written; the hooks that care read
`engine.state.resumed` at RESUMED or STARTED (the metrics log records its row, the data
position checks an elastic resume). Nothing goes through the reports channel.
"""
import os
from typing import Callable, Optional, Sequence

import yaml

from engine import Resumed, dist
from engine.config import ConfigError, differences, read_yaml
from engine.errors import CheckpointError, RunDirectoryError
from engine.serialization import load_restricted, require_regular_file

from . import kinds
from .checkpoint_state import CheckpointContents, check_fit, check_format
from .run_directory import CONFIG_MARK, WEIGHTS, RunDirectory, listing


class Resumer:
    """`fixed` names config keys (dotted, or a section prefix) that a resumed run must not
    change; `describe_world_change(old_world, engine)` gives (text, fields) for a resume on
    another number of processes (the wiring knows what the LR and batch do then)."""

    def __init__(self, run_dir: RunDirectory, contents: CheckpointContents, fixed: Sequence[str] = (),
                 describe_world_change: Optional[Callable] = None):
        self.run_dir, self.contents, self.fixed = run_dir, contents, tuple(fixed)
        self.describe_world_change = describe_world_change

    def resume(self, engine, checkpoint: Optional[str]) -> Optional[Resumed]:
        """Load everything from the checkpoint that Global.checkpoint (None, "auto" or a path)
        designates; returns what was found (also in `engine.state.resumed`), or None for a
        fresh start."""
        path = self.starting_point(checkpoint)
        if path is None:
            return None
        try:
            ckpt = load_restricted(path, "Global.checkpoint")
        except CheckpointError as exc:
            hint = self.run_dir.newest_hint(exclude=os.path.basename(path)) if self.run_dir.owns(path) else ""
            raise CheckpointError(f"{exc}{hint}") from None
        check_format(ckpt, path)
        changes = self._check_drift(ckpt, path, engine)  # first: it names the config keys
        self._check_facts(ckpt, path)
        check_fit(ckpt, path, self.contents.model, self.contents.shape_problems)
        self.contents.restore(ckpt, engine, dist.rank(), path)
        resumed = self._found(ckpt, path, changes, engine)
        engine.resumed_from(resumed)
        return resumed

    def _found(self, ckpt, path, changes, engine) -> Resumed:
        worlds = (ckpt["world_size"], self.contents.world_size)
        text, fields = "", {}
        if worlds[0] != worlds[1] and self.describe_world_change is not None:
            text, fields = self.describe_world_change(worlds[0], engine)
        changed = {k: [old, new] for k, old, new in changes}
        record = None
        if changed or worlds[0] != worlds[1]:  # metrics.jsonl's resume row
            counters = engine.state.counters()  # the data has no plan for the resumed epoch yet:
            counters["epochs_done"] = ckpt.get("epochs_done", counters["epochs_done"])  # the writer's
            record = {"event": kinds.RESUME, **counters, "from": path, "changes": changed,
                      "world_size": list(worlds), **fields}
        return Resumed(path, worlds, changed, record, text)

    # ---- which checkpoint -------------------------------------------------------------------
    def starting_point(self, checkpoint: Optional[str]) -> Optional[str]:
        """The checkpoint to resume from (None: from the beginning), or a refusal that keeps
        an earlier run's files safe. `auto` in a directory whose run (with this config) wrote
        files but no checkpoint yet starts it over."""
        run_dir = self.run_dir
        ways_out = ("continue it with -o Global.checkpoint=auto, or start over in another "
                    "-o Global.output_dir=...")
        self._refuse_a_foreign_config()
        if not checkpoint:
            found = run_dir.previous_run()
            if found:
                raise RunDirectoryError(f"Global.output_dir {run_dir.path} holds an earlier run "
                                        f"({listing(found)}): {ways_out}")
            return None
        if checkpoint == "auto":
            latest = run_dir.latest()
            if latest:
                return run_dir.file(latest)
            weights = [n for n in WEIGHTS if os.path.isfile(run_dir.file(n))] + run_dir.checkpoints()
            if weights and not run_dir.checkpoints() and self._same_config_as_here():
                print(f"Global.checkpoint=auto: the run in {run_dir.path} wrote {listing(weights)} but no "
                      f"checkpoint yet (it stopped before its first): starting it from the beginning")
                return None
            if weights:
                raise RunDirectoryError(f"Global.checkpoint=auto: {run_dir.path} has no latest.txt but "
                                        f"holds {listing(weights)} of an earlier run{run_dir.newest_hint()}")
            return None  # no checkpoint yet: the run starts again from its beginning
        if not os.path.exists(checkpoint):
            raise CheckpointError(f"Global.checkpoint: {checkpoint} does not exist")
        require_regular_file(checkpoint, "Global.checkpoint")
        if not run_dir.owns(checkpoint):
            found = run_dir.previous_run()
            if found:
                raise RunDirectoryError(
                    f"Global.output_dir {run_dir.path} holds another run ({listing(found)}) and "
                    f"Global.checkpoint comes from {os.path.dirname(os.path.abspath(checkpoint))}: "
                    f"resuming here would mix two runs; choose an empty -o Global.output_dir=...")
        return checkpoint

    def _refuse_a_foreign_config(self) -> None:
        """config.yaml here is rewritten at every start with the resolved config: one that this
        program did not write (no mark, and no run's files beside it) is the user's own."""
        path = self.run_dir.file("config.yaml")
        if not os.path.isfile(path) or self.run_dir.previous_run():
            return
        with open(path, "rb") as f:
            if f.read(len(CONFIG_MARK)) == CONFIG_MARK.encode():
                return
        raise RunDirectoryError(f"Global.output_dir {self.run_dir.path} holds a config.yaml that no run "
                                f"wrote (yours?); each run writes its resolved config there: move yours, or "
                                f"choose another -o Global.output_dir=...")

    def _same_config_as_here(self) -> bool:
        """The run directory's config.yaml is this run's: none of the `fixed` keys (the model,
        the data, the seed) differ, the changes a resume would accept too."""
        try:  # the bounded reader the config itself went through: this file is on disk, not ours yet
            with open(self.run_dir.file("config.yaml"), encoding="utf-8") as f:
                here = read_yaml(f.read(), "config.yaml")
        except (OSError, yaml.YAMLError, UnicodeDecodeError, ConfigError):
            return False
        return isinstance(here, dict) and not self._fixed_changes(differences(here, self.contents.config))

    # ---- whether it may continue --------------------------------------------------------------
    def _fixed_changes(self, changes):
        return [c for c in changes if any(c[0] == f or c[0].startswith(f + ".") for f in self.fixed)]

    def _check_facts(self, ckpt, path):
        saved = ckpt.get("facts", {})
        wrong = [f"{k}: {saved[k]} then, {v} now" for k, v in self.contents.facts.items()
                 if k in saved and saved[k] != v]
        if wrong:
            what = "other training data" if any(w.startswith("training images") for w in wrong) else "another run"
            raise CheckpointError(f"Global.checkpoint: {path} belongs to {what} (" + "; ".join(wrong) +
                                  "): it cannot continue here; resume it with what it was written with, or "
                                  "start a new run from its weights")

    def _check_drift(self, ckpt, path, engine):
        changes = [c for c in differences(ckpt["config"], self.contents.config) if c[0] != "Global.checkpoint"]
        refused = self._fixed_changes(changes)
        if refused:
            raise CheckpointError(
                f"Global.checkpoint: {path} cannot continue with these changes, which make its "
                f"position in the run meaningless:\n" +
                "\n".join(f"  {k}: {old!r} then, {new!r} now" for k, old, new in refused) +
                "\nput them back, or start a new run (another Global.output_dir) from its weights")
        epoch = ckpt["engine"]["position"]["epoch"]
        if epoch > engine.state.max_epochs:
            raise CheckpointError(f"Global.checkpoint: {path} is at epoch {epoch}, past "
                                  f"Global.epochs={engine.state.max_epochs}; raise Global.epochs")
        return changes
