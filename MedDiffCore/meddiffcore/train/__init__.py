"""Training: ``python -m meddiffcore.train CONFIG`` (also under ``torchrun``)."""

from .config import TrainConfig

__all__ = ["TrainConfig", "load_training_config", "main"]


def load_training_config(path, overrides=()):
    """Read a config file and map it onto its task's dataclass; returns ``(task, config)``."""
    from ..config import apply_overrides, from_dict, read_config_file
    from ..errors import ConfigError
    from ..tasks.base import trainable_task

    data = apply_overrides(read_config_file(path), list(overrides))
    name = data.pop("task", None)
    if not name:
        raise ConfigError(f"config '{path}' does not say which task it trains", "add a line such as task = \"ctca\" at the top")
    task = trainable_task(name)
    return task, from_dict(task.config_class, data, where="")


def main(argv=None) -> int:
    from .cli import main as cli_main

    return cli_main(argv)
