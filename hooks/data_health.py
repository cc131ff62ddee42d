"""Reports, at the end of each epoch, how many unreadable images the loader has skipped."""
from engine import Hook, dist


class DataHealth(Hook):
    priority = 80

    def __init__(self, dataset):
        self.dataset, self.reported = dataset, 0

    def epoch_end(self, engine):
        count = self.dataset.bad_count
        engine.state.metrics["skipped_files"] = count
        if count > self.reported and dist.is_main():
            print(f"warning: {count} unreadable training images skipped so far (replaced by "
                  f"other samples; their paths are in the warnings above)", flush=True)
        self.reported = count
