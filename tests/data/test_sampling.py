"""The training loader under the real Lightning Trainer: every epoch gives all its batches."""

import lightning as L
import torch

from rlhf_lab.data.sampling import RankSampler, ResumableLoader


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, list[int]]] = []  # (epoch, rows of the batch)

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch.tolist()))
        return (self.weight * batch.float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_every_epoch_gives_all_its_rows_in_a_new_order():
    """Lightning takes len(loader) batches and never runs the iterator to its end: the loader's count
    of batches done must start again at the next epoch (it used to carry over, and every other epoch
    came out empty)."""
    rows = list(range(10))
    sampler = RankSampler([1] * 10, 4, shuffle=True, group_by_length=False, seed=0)
    loader = ResumableLoader(rows, batch_size=4, sampler=sampler)
    module = Recorder()
    L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, loader)
    by_epoch = {e: sorted(i for epoch, batch in module.seen if epoch == e for i in batch) for e in range(3)}
    assert by_epoch == {e: rows for e in range(3)}
    orders = [[i for epoch, batch in module.seen if epoch == e for i in batch] for e in range(3)]
    assert len({tuple(o) for o in orders}) == 3  # each epoch its own shuffle (set_epoch)
