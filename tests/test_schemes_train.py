"""scheme=data and scheme=hybrid through launch/train.py under torchrun: kill -9 and resume bit for
bit, and model_final.pt in the one-process format that evaluate reads."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import KILLED, TINY, final_state, launch, ok, published_checkpoint

pytestmark = pytest.mark.slow

HYBRID = [*TINY, "model=one_tower", "scheme=hybrid", "scheme.fc8=split", "scheme.fc_update=pass",
          "checkpoint.every_steps=3"]


def test_hybrid_killed_resumes_to_the_same_weights_bit_for_bit_and_evaluates_as_one_process(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crash"
    ok(launch([*HYBRID, f"hydra.run.dir={straight}"]))
    assert launch([*HYBRID, f"hydra.run.dir={crashed}"], script=KILLED, env={"KILL_AT_STEP": "11"}).returncode != 0
    assert published_checkpoint(crashed) == "step-00000009-epoch-0001-batch-0000001"
    assert sorted(p.name for p in (crashed / "checkpoints" / published_checkpoint(crashed)).glob("*.pt")) == \
        ["tower0.pt", "tower1.pt"]  # one shard per process: each its blocks of fc6, fc7 and fc8
    ok(launch([*HYBRID, f"hydra.run.dir={crashed}", "resume=true"]))
    want, got = final_state(straight), final_state(crashed)
    assert want["fc6.weight"].shape[0] == 4096  # the blocks put back together
    for name in want:
        assert torch.equal(want[name], got[name]), name
    # The one-process net evaluates what the hybrid's passes evaluated during training.
    row = json.loads((straight / "metrics.jsonl").read_text().splitlines()[-1])
    ok(launch([f"checkpoint={straight}", f"output={tmp_path / 'eval.json'}", "progress=false"], nproc=0,
              script="evaluate"))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["center"]["top1_err"] == pytest.approx(row["val_top1_err"])
