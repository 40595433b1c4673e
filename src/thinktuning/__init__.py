"""ThinkTuning: GRPO in which a teacher writes first-person feedback into some of the student's rollouts."""

from thinktuning.config.load import load_config
from thinktuning.config.schema import ThinkTuningConfig

__all__ = ["ThinkTuningConfig", "ThinkTuningTrainer", "load_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the trainer pulls in torch/transformers; importing the package for its config stays light
    if name == "ThinkTuningTrainer":
        from thinktuning.train.trainer import ThinkTuningTrainer

        return ThinkTuningTrainer
    raise AttributeError(name)
