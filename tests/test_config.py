"""The typed schema of every command (alexnet_mp.config): every preset composes, a bad value
is one line naming the key and what it must be, the resume rule is the schema's, and every
command the README and docs/ show composes against its config."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alexnet_mp import config
from alexnet_mp.config.train import RESUME_MAY_CHANGE, TrainConfig
from alexnet_mp.errors import UserError
from helpers import ROOT, compose_config, config_error, job_env


# -- every preset composes over its schema ----------------------------------------------------------

@pytest.mark.parametrize("name, overrides, schema", [
    ("config", [], "TrainConfig"),
    ("config", ["model=half", "data=imagefolder", "data.root=/x"], "TrainConfig"),
    ("config", ["experiment=paper", "data.root=/x"], "TrainConfig"),
    ("config", ["experiment=smoke", "+ablation=no_conv4"], "TrainConfig"),
    ("evaluate", ["checkpoint=/x"], "EvaluateConfig"),
    ("evaluate", ["checkpoint=/x", "data=prepared", "data.root=/y"], "EvaluateConfig"),
    ("figures", ["checkpoint=/x"], "FiguresConfig"),
    ("prepare", ["data.root=/x", "out=/y"], "PrepareConfig"),
    ("bench", [], "BenchConfig"),
    ("bench_data", [], "BenchDataConfig"),
    ("bench_comm_wait", [], "BenchCommWaitConfig"),
    ("bench_launcher_death", [], "BenchLauncherDeathConfig"),
    ("gpu_check", [], "GpuCheckConfig"),
    ("reproduce", [], "ReproduceConfig"),
])
def test_every_preset_composes_over_its_schema(name, overrides, schema):
    cfg = compose_config(name, overrides)
    assert OmegaConf.get_type(cfg).__name__ == schema
    data = cfg.get("data")
    if data is not None:  # the data group is typed by its own schema too
        assert OmegaConf.get_type(data).__name__ == {"synthetic": "SyntheticData", "imagefolder": "ImageFolderData",
                                                     "prepared": "PreparedData"}[data.name]


@pytest.mark.parametrize("name", ["bench", "bench_data", "bench_comm_wait", "bench_launcher_death", "gpu_check",
                                  "bench_schemes"])
def test_a_benchmark_writes_under_outputs_unless_told_to_publish(name):
    """A benchmark run with its defaults leaves the committed results (benchmarks/results) alone."""
    assert compose_config(name, []).output_dir == "outputs/benchmarks"


def test_the_keys_other_commands_read_are_there_with_their_defaults():
    cfg = compose_config("config", [])
    assert (cfg.dist_backend, cfg.deterministic, cfg.resume) == ("auto", False, False)
    assert compose_config("config", ["resume=auto"]).resume == "auto"
    assert compose_config("config", ["resume=true"]).resume is True
    assert compose_config("config", ["model.geometry=227"]).model.geometry == "227"  # a number becomes the word


# -- a bad value is one line ------------------------------------------------------------------------

@pytest.mark.parametrize("name, override, line", [
    ("config", "epochs=abc", "epochs must be a positive integer, not 'abc'"),
    ("config", "epochs=0", "epochs must be a positive integer, not 0"),
    ("config", "seed=1.5", "seed must be a non-negative integer, not 1.5"),
    ("config", "precision=fp16", "precision must be fp32 or bf16, not 'fp16'"),
    ("config", "optim.lr=-1", "optim.lr must be a positive number, not -1.0"),
    ("config", "schedule.factor=1", "schedule.factor must be a number in (0, 1), not 1.0"),
    ("config", "model.lrn=foo", "model.lrn must be paper, cuda-convnet or none, not 'foo'"),
    ("config", "resume=no", "resume must be true, false or auto, not 'no'"),
    ("config", "dist_backend=mpi", "dist_backend must be auto, nccl or gloo, not 'mpi'"),
    ("config", "data.workers=-1", "data.workers must be auto or a non-negative integer, not -1"),
    ("config", "data.stats_cache=disk", "data.stats_cache must be data or run, not 'disk'"),
    ("config", "fooo=1", "unknown key fooo: no setting of this command has that name"),
    ("config", "+foo=1", "unknown key foo: no setting of this command has that name"),
    ("config", "+model.foo=1", "unknown key model.foo: no setting of this command has that name"),
    ("config", "data=folder", "no data called 'folder': choose one of imagefolder, prepared, synthetic (data=NAME)"),
    ("evaluate", "split=test", "split must be val or train, not 'test'"),
    ("evaluate", "device=tpu", "device must be auto, cpu or cuda, not 'tpu'"),
    ("figures", "neighbours=0", "neighbours must be a positive integer, not 0"),
    ("prepare", "format=png", "format must be raw or jpeg, not 'png'"),
    ("prepare", "jpeg_quality=0", "jpeg_quality must be an integer from 1 to 100, not 0"),
    ("prepare", "workers=0", "workers must be auto or a positive integer, not 0"),
    ("prepare", "shard_size=big", "shard_size must be auto or a positive integer, not 'big'"),
    ("prepare", "data.image_size=-3", "data.image_size must be a positive integer, not -3"),
    ("prepare", "debug.stop_after_shards=-1", "debug.stop_after_shards must be a non-negative integer, not -1"),
    ("bench", "rounds=0", "rounds must be a positive integer, not 0"),
    ("bench", "comm.overlap=maybe", "comm.overlap must be true or false, not 'maybe'"),
    ("bench_data", "repeats=0", "repeats must be a positive integer, not 0"),
    ("reproduce", "full_processes=3", "full_processes must be 1 (one process, groups=2) or 2 (one tower each), not 3"),
    ("reproduce", "ablation_seeds=0", "ablation_seeds must be a positive integer, not 0"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_what_it_must_be(name, override, line):
    got = config_error(name, override, *(["data.root=/x", "out=/y"] if name == "prepare" else []),
                       *(["checkpoint=/x"] if name in ("evaluate", "figures") else []))
    assert line in got and "\n" not in got, got


def test_a_launcher_prints_composition_and_schema_errors_as_one_line(tmp_path):
    for script, args, words in (("train.py", ["epochs=abc"], "epochs must be a positive integer, not 'abc'"),
                                ("train.py", ["fooo=1"], "unknown key fooo"),
                                ("train.py", ["optim.lr=-1"], "optim.lr must be a positive number"),
                                ("evaluate.py", ["checkpoint=/x", "split=test"], "split must be val or train")):
        proc = subprocess.run([sys.executable, f"launch/{script}", *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                              env=job_env(), capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("alexnet_mp: error: ") and words in lines[0], lines


def test_cfg_job_and_help_show_the_typed_config():
    job = subprocess.run([sys.executable, "launch/train.py", "--cfg", "job"], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr
    shown = OmegaConf.create(job.stdout)
    assert shown.model.geometry == "224" and shown.dist_timeout_s == 300.0 and shown.data.name == "synthetic"
    helped = subprocess.run([sys.executable, "launch/train.py", "--help"], cwd=ROOT, env=job_env(), capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "docs/configuration.md" in helped.stdout and "model: full, half" in helped.stdout and "ablation: caffe_bias," in helped.stdout
    assert "base_" not in helped.stdout.split("== Config ==")[0]  # the schema nodes are not listed as presets


# -- the schema's own rules ---------------------------------------------------------------------------

def test_every_setting_says_what_it_must_be():
    from benchmarks.comm_wait import schema as comm_wait
    from benchmarks.data import schema as bench_data
    from benchmarks.gpu_check import schema as gpu_check
    from benchmarks.launcher_death import schema as launcher_death
    from benchmarks.one_vs_two import schema as one_vs_two

    modules = (config.data, config.evaluate, config.prepare, config.reproduce,
               one_vs_two, bench_data, comm_wait, launcher_death, gpu_check)
    for schema in (TrainConfig, *[c for m in modules for c in vars(m).values() if dataclasses.is_dataclass(c)]):
        for f in dataclasses.fields(schema):
            words = config.describe(f)
            assert words and words not in ("a value", "a string") or "List" in str(f.type) \
                or dataclasses.is_dataclass(f.default_factory) or f.name in ("checkpoint", "out", "output",
                                                                           "output_dir", "root", "images",
                                                                           "work_dir", "sweep_dir", "output_name",
                                                                           "data", "model"), (schema, f.name, words)


def test_what_may_change_on_resume_is_the_schemas():
    assert {"epochs", "resume", "precision", "compile", "compile_mode", "dist_backend", "deterministic",
            "checkpoint.", "debug.", "comm.", "data.root", "data.workers", "data.augment"} <= set(RESUME_MAY_CHANGE)
    assert not any(k.startswith(("model", "optim", "schedule", "seed", "batch_size", "data.image_size",
                                 "data.pca")) for k in RESUME_MAY_CHANGE)
    from alexnet_mp.train import check_resumable

    saved = OmegaConf.to_container(compose_config("config", []), resolve=True)
    now = OmegaConf.to_container(compose_config("config", ["precision=bf16", "epochs=9", "debug.max_steps=3",
                                                           "resume=auto", "dist_backend=gloo"]), resolve=True)
    check_resumable(saved, now, Path("ckpt"))
    changed = OmegaConf.to_container(compose_config("config", ["optim.lr=0.5"]), resolve=True)
    with pytest.raises(UserError, match=r"optim.lr=0.002 here 0.5"):
        check_resumable(saved, changed, Path("ckpt"))


# -- every command in the README and docs/ composes ----------------------------------------------------

PLACEHOLDERS = re.compile(r"\b(RUN_DIR|DIR|PATH|FILE|SRC|DST|HOST)\b")


def _scripts_of_make() -> dict[str, str]:
    """make target -> the script its recipe runs."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if re.match(r"^[a-z][\w-]*:", line):
            current = line.split(":", 1)[0]
        elif current and (m := re.search(r"((?:launch|benchmarks)/[\w/]+\.py)", line)):
            targets.setdefault(current, m.group(1))
    return targets


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, overrides) of every command line in README.md and docs/*.md (benchmarks' too)."""
    out, make = [], _scripts_of_make()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not doc.is_file():
            continue
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            line, where = lines[i].strip(), f"{doc.name}:{i + 1}"
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            if not re.match(r"(python (launch|benchmarks)/|torchrun |make \S+ .*ARGS=)", line):
                continue
            words = shlex.split(PLACEHOLDERS.sub("/tmp/placeholder", line), comments=True)
            if words[0] == "make":
                args = next(w.split("=", 1)[1] for w in words if w.startswith("ARGS="))
                out.append((where, make[words[1]], shlex.split(args)))
                continue
            script = next((w for w in words if w.endswith(".py")), None)
            if script is not None and "config_name=" in (ROOT / script).read_text():  # not scaling_model.py
                out.append((where, script, [w for w in words[words.index(script) + 1:] if "=" in w]))
    return out


def _config_name(script: str) -> str:
    return re.search(r'config_name="(\w+)"', (ROOT / script).read_text()).group(1)


def test_the_docs_show_commands():
    assert len(documented_commands()) >= 5, documented_commands()


@pytest.mark.parametrize("where, script, overrides", documented_commands())
def test_every_documented_command_composes(where, script, overrides, tmp_path):
    overrides = [o.replace("/tmp/placeholder", str(tmp_path)) for o in overrides]
    name = _config_name(script)
    needed = {"evaluate": "checkpoint", "figures": "checkpoint", "prepare": "out"}.get(name)
    if needed and not any(o.startswith(f"{needed}=") for o in overrides):
        overrides.append(f"{needed}={tmp_path}")  # a command's missing required key is its own, clear error
    compose_config(name, overrides)
