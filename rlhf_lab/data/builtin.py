"""Built-in dataset loaders, registered through the same hook as a third party's."""

from rlhf_lab import hookimpl
from rlhf_lab.config import SourceConfig
from rlhf_lab.data import synthetic


def load_synthetic(src: SourceConfig, fmt: str) -> list[dict]:
    """The embedded instruction tasks (``rlhf_lab.data.synthetic``); ``src.task`` picks one task."""
    return synthetic.generate(fmt, src.num_rows, seed=src.generator_seed, tasks=[src.task] if src.task else None)


@hookimpl
def rlhf_lab_add_datasets(register):
    register.add_dataset("synthetic", load_synthetic)
