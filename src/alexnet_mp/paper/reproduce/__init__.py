"""The paper's comparisons re-run with seeds: ``make reproduce`` (``launch/reproduce.py``).

Every configuration (the full net, the half net and each ablation in ``conf/ablation/``)
is trained from each seed with the trainer, evaluated with the evaluator (centre crop and
ten-crop), and its conv1 kernels measured (:mod:`alexnet_mp.paper.figures34`). Each run's result is
written to ``<sweep_dir>/<config>-seed<k>/result.json`` as it finishes, so a sweep that is
stopped continues where it stopped; a run stopped mid-way resumes from its checkpoint.

The report compares each configuration with the full net trained from the same seeds: the
paired difference in error, its 95% interval (Student's t over seeds) and the paper's
stated difference beside it. An interval that includes 0 is "not resolved at this budget".

The package: ``plan`` (the configurations and the runs), ``sweep`` (one run and the data),
``report`` (summary, markdown, figure), ``run`` (``reproduce()``).
"""

from alexnet_mp.paper.reproduce.plan import CONFIGS, PAPER_DELTAS, REPO, plan_runs, preset_keys
from alexnet_mp.paper.reproduce.report import CROPS, ERRORS, markdown, plot, summarise, write_report
from alexnet_mp.paper.reproduce.run import reproduce
from alexnet_mp.paper.reproduce.sweep import Sweep

__all__ = ["CONFIGS", "PAPER_DELTAS", "REPO", "ERRORS", "CROPS", "reproduce", "plan_runs", "summarise", "markdown",
           "plot", "write_report", "preset_keys", "Sweep"]
