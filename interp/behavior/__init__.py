"""The behavioural harness: every system answers every item of a spoken set; one predictions file per pair.

Modules, one job each:
* `prediction`: the `Prediction` record, one line of a predictions file (`to_dict` / `from_dict`);
* `scoring`: the rules a run records, choice parsing and open-answer matching;
* `systems`: the systems of `--systems` (`SystemSpec`, `parse_systems`) and the `System` union the harness runs;
* `answering`: one item answered by one system (`answer_item`), and the checks made before a run writes;
* `files`: predictions files, their sidecars and `run.json`, read and written (atomically where whole);
* `harness`: `run_system`, resumable, finalised under the run's calibration, optionally under an audio ablation
  (interp.data.ablation: silence, babble or swapped audio; `check_ablated_run` refuses a bad one up front).

The statistics of a run folder (the stats.json of `interp stats`) are interp.stats.run's.
"""

from __future__ import annotations

from interp.behavior.answering import answer_item, check_scoring
from interp.behavior.files import (
    PREDICTIONS_SUFFIX,
    SIDECAR_SUFFIX,
    read_predictions,
    read_sidecar,
    record_run,
    run_summary,
    set_name,
    sidecar_ablation,
    system_folder,
    write_predictions,
)
from interp.behavior.harness import Progress, check_ablated_run, finalise_choices, run_system
from interp.behavior.prediction import Prediction
from interp.behavior.scoring import (
    CALIBRATION_RULES,
    LENGTH_POLICY,
    OPEN_ANSWER_RULE,
    PARSE_RULE,
    match_answer,
    normalize_answer,
    parse_choice,
)
from interp.behavior.systems import System, SystemSpec, parse_systems

__all__ = [
    "Prediction", "System", "SystemSpec", "Progress", "parse_systems", "run_system", "answer_item", "check_scoring",
    "finalise_choices", "read_predictions", "write_predictions", "read_sidecar", "run_summary", "record_run",
    "set_name", "system_folder", "sidecar_ablation", "check_ablated_run", "parse_choice", "normalize_answer",
    "match_answer", "PREDICTIONS_SUFFIX", "SIDECAR_SUFFIX",
    "LENGTH_POLICY", "CALIBRATION_RULES", "PARSE_RULE", "OPEN_ANSWER_RULE",
]
