"""Result aggregation for PLPP/CoOp-style output trees.

Modules, one job each:

* :mod:`.names` -- dataset folder/display names and the dataset lists of each protocol;
* :mod:`.parse` -- the result of one run dir (``results.json`` or the Dassl ``log.txt``);
* :mod:`.records` -- whether a run's ``results.json`` belongs in its folder, and which weights made it;
* :mod:`.layout` -- finding the run dirs of each protocol in an output tree;
* :mod:`.aggregate` -- mean/std/CI95 over seeds, averages over datasets, the base-to-new HM rule,
  and the list of missing, incomplete or mismatched runs;
* :mod:`.published` -- published numbers of the peer methods, each table with its source, and their
  averages over the same datasets as ours;
* :mod:`.tables` -- text tables, JSON and CSV;
* :mod:`.plot` -- the few-shot figure;
* :mod:`.cli` -- the ``plpp-results`` command (``python -m plpp.results``).
"""

from .aggregate import Missing, Stat, harmonic_mean
from .parse import RunResult, load_run, parse_log

__all__ = ["Missing", "RunResult", "Stat", "harmonic_mean", "load_run", "parse_log"]
