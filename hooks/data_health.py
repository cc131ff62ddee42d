"""Reports, at the end of each epoch, how many unreadable images the loader has skipped.

Takes any dataset with a `bad_count` (files skipped so far over all worker processes); puts
{"skipped_files"} as "data_health" in `state.reports`."""
from engine import Hook, dist

from .order import Order
from . import kinds



class DataHealth(Hook):
    priority = Order.DATA_HEALTH

    def __init__(self, dataset):
        self.dataset, self.reported = dataset, 0

    def epoch_end(self, engine):
        count = self.dataset.bad_count
        engine.state.reports.put(kinds.DATA_HEALTH, {"skipped_files": count})
        if count > self.reported and dist.is_main():
            print(f"warning: {count} unreadable training images skipped so far (replaced by "
                  f"other samples; their paths are in the warnings above)", flush=True)
        self.reported = count
