"""Conditioning checks of ``flashsim validate``: does the flow follow its gen inputs?

The per-column W1 of :mod:`flashsim.validate` compares marginals over the whole split,
which a flow blind to its conditioning reproduces. These checks compare
``p(targets | conditioning)`` itself, each with a statistical floor
(docs/validation.md explains every number and plot):

* :mod:`.pit`: per-row calibration (ranks of FullSim among flow draws), by class;
* :mod:`.information`: ΔNLL when the conditioning is permuted, overall and per column;
* :mod:`.physics`: response profiles per class and ROC/AUC by true class;
* :mod:`.correlations`: Pearson matrices, FlashSim vs FullSim;
* :mod:`.report`: runs them all (:func:`check_conditioning`), summary and table lines;
* :mod:`.monitor`: the cheap subset on fixed rows and noise, for training
  (:func:`cheap_metrics`).

Which columns are classes, gen pT/eta, taggers or integers comes from
``Layout.roles`` (:mod:`flashsim.layouts`).
"""

from __future__ import annotations

from flashsim.conditioning.monitor import cheap_metrics
from flashsim.conditioning.report import ConditioningResult, check_conditioning, table_lines
from flashsim.conditioning.rows import CheckRows

__all__ = ["CheckRows", "ConditioningResult", "cheap_metrics", "check_conditioning", "table_lines"]
