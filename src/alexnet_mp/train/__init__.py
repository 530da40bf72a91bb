"""Train AlexNet with the paper's recipe (Krizhevsky et al. 2012, sec. 5), one tower per process.

    torchrun --nproc_per_node=2 launch/train.py                       # the two-tower net, synthetic data
    torchrun --nproc_per_node=2 launch/train.py data=imagefolder data.root=PATH
    python launch/train.py model=half                                 # the one-GPU half net
    torchrun --nproc_per_node=2 launch/train.py hydra.run.dir=DIR resume=true

Two processes train the full net as two towers; one process trains either net
whole. Every rank computes the same loss and metrics (the logits are gathered on
every device); only rank 0 prints and writes shared files.

The package, one concern a module:

- ``start``: placement, the run directory, resume or not, the data checks, ``config.yaml``;
- ``state``: ``RunState`` (what a checkpoint holds), ``Position``, ``Speed``, ``build_run_state``;
- ``inputs``: ``Data`` and ``Inputs``, the stored images and the augmented batches;
- ``step``: ``train_step``, one SGD step, and ``StepHooks``, what a caller adds to each step;
- ``loop``: ``train_epoch``, ``train_epochs``, ``validate`` (centre-crop error during training);
- ``checkpoint_policy``: when the run state is saved and what a resumed one must match;
- ``stop``: a lost process becomes one line, not a hang;
- ``finish``: ``model_final.pt`` and ``summary.json``;
- ``run``: ``train()``, the stages in order.
"""

from alexnet_mp.train.checkpoint_policy import Checkpoints, check_resumable, model_signature
from alexnet_mp.train.inputs import Data, Inputs, build_augment, build_data
from alexnet_mp.train.loop import train_epoch, train_epochs, validate
from alexnet_mp.train.run import train
from alexnet_mp.train.state import Position, RunState, Speed, build_run_state
from alexnet_mp.train.step import StepHooks, train_step

__all__ = ["train", "train_step", "StepHooks", "train_epoch", "train_epochs", "build_run_state",
           "RunState", "Position", "Speed", "Checkpoints", "check_resumable", "model_signature", "Data", "Inputs",
           "build_data", "build_augment", "validate"]
