"""Audio ablations (`interp behave --ablate silence|babble|swap`): the transforms, the harness's ablated runs,
their statistics, the CLI's refusals, and a planted outcome on the real mini cascade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interp.behavior import Prediction, read_predictions, read_sidecar, run_system
from interp.data.ablation import (
    ABLATION_RULES,
    AblatedAudio,
    babble,
    babble_recording,
    check_ablation,
    derangement,
    silence,
    swap_sources,
)
from interp.errors import InterpError
from interp.models.cascade import Cascade, Oracle
from interp.models.tiny import tiny_text_lm
from interp.stats import cohen_kappa
from interp.stats.run import run_statistics
from tests.helpers import run_cli
from tests.test_behavior import make_set, sentiment_records

# --- the transforms ----------------------------------------------------------------------------------------------


def test_silence_is_zeros_of_the_same_length() -> None:
    audio = np.random.default_rng(0).standard_normal(12345).astype(np.float32) * 0.1
    quiet = silence(audio)
    assert quiet.shape == audio.shape and quiet.dtype == np.float32 and not quiet.any()


def test_babble_has_the_length_and_level_of_the_item_but_not_its_audio() -> None:
    recording = babble_recording()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    noise = babble(audio, recording, np.random.default_rng([0, 1]))
    assert noise.shape == audio.shape and noise.dtype == np.float32
    assert not np.allclose(noise, audio) and abs(np.corrcoef(noise, audio)[0, 1]) < 0.1
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=0.05)
    np.testing.assert_array_equal(noise, babble(audio, recording, np.random.default_rng([0, 1])))  # seeded
    assert not np.array_equal(noise, babble(audio, recording, np.random.default_rng([0, 2])))
    longer = np.full(recording.size + 1000, 0.1, dtype=np.float32)  # looped when the recording is shorter
    assert babble(longer, recording, np.random.default_rng(0)).shape == longer.shape
    assert babble(np.zeros(800, np.float32), recording, np.random.default_rng(0)).any()  # silent item: own level


def test_swap_is_a_seeded_derangement() -> None:
    for n in (2, 3, 5, 12, 100):
        for seed in range(20):
            perm = derangement(n, seed)
            assert sorted(perm.tolist()) == list(range(n)), "a permutation"
            assert not np.any(perm == np.arange(n)), "no fixed point"
    np.testing.assert_array_equal(derangement(12, 3), derangement(12, 3))
    assert sum(not np.array_equal(derangement(12, 0), derangement(12, seed)) for seed in range(1, 11)) >= 9
    assert derangement(2, 0).tolist() == [1, 0]
    ids = [f"item-{i}" for i in range(6)]
    sources = swap_sources(ids, 0)
    assert sorted(sources.values()) == ids and all(sources[i] != i for i in ids)
    for n in (0, 1):
        with pytest.raises(InterpError, match="at least 2 items"):
            derangement(n, 0)
    with pytest.raises(InterpError, match="unknown ablation 'mute'; choose one of silence, babble, swap"):
        check_ablation("mute")


def test_ablated_audio_of_a_set(tmp_path: Path) -> None:
    spoken = make_set(tmp_path / "s", sentiment_records(5))
    swap = AblatedAudio.build(spoken, "swap", spoken.items[:4], seed=1)
    for item in spoken.items[:4]:
        source = swap.heard_from(item)
        assert source != item.id and source in {i.id for i in spoken.items[:4]}
        np.testing.assert_array_equal(swap.audio(item), spoken.load_audio(next(i for i in spoken.items
                                                                                if i.id == source)))
    with pytest.raises(InterpError, match="not among the 4 items"):
        swap.audio(spoken.items[4])
    quiet = AblatedAudio.build(spoken, "silence", spoken.items, seed=0)
    assert quiet.heard_from(spoken.items[0]) is None and not quiet.audio(spoken.items[0]).any()
    assert quiet.config() == {"ablation": "silence", "seed": 0, "rule": ABLATION_RULES["silence"]}
    with pytest.raises(InterpError, match="at least 2 items"):
        AblatedAudio.build(spoken, "swap", spoken.items[:1])


# --- the harness -------------------------------------------------------------------------------------------------


class _IdentifyingASR:
    """An ASR whose transcript names the clip it heard (its length and sum), so answers depend on audio alone."""

    name = "identifying-asr"

    def transcribe(self, audio) -> list[str]:
        return [f"{len(clip)} samples summing to {float(np.sum(clip)):.4f}" for clip in audio]


@pytest.fixture(scope="module")
def tiny_oracle() -> Oracle:
    return Oracle(tiny_text_lm(), name="tiny-oracle")


def _cascade(oracle: Oracle) -> Cascade:
    return Cascade(_IdentifyingASR(), oracle.llm, name="tiny-cascade")


def test_ablated_runs_are_their_own_runs(tmp_path: Path, tiny_oracle: Oracle) -> None:
    """An ablated run writes RUN/<system>+<ablation>/, records the ablation in its sidecar, and under swap each
    line names the item it heard, whose clean transcript and answer it reproduces."""
    spoken = make_set(tmp_path / "s", sentiment_records(6))
    system, run = _cascade(tiny_oracle), tmp_path / "run"
    clean = {p.id: p for p in read_predictions(run_system(system, spoken, run, system_name="c"))}
    path = run_system(system, spoken, run, system_name="c", ablation="swap", seed=3)
    assert path == run / "c+swap" / "s.jsonl"
    config = read_sidecar(path.with_suffix(".json"))["config"]
    assert config["ablation"] == {"ablation": "swap", "seed": 3, "rule": ABLATION_RULES["swap"]}
    assert config["system"]["name"] == "c"
    assert read_sidecar(run / "c" / "s.json")["config"]["ablation"] is None
    swapped = read_predictions(path)
    expected = swap_sources([item.id for item in spoken.items], 3)
    for line in swapped:
        assert line.audio_from == expected[line.id] != line.id
        assert line.asr_transcript == clean[line.audio_from].asr_transcript
        assert line.scores == clean[line.audio_from].scores
        assert line.label == clean[line.id].label
    assert all(p.audio_from is None for p in clean.values())
    for text in path.read_text(encoding="utf-8").splitlines():  # audio_from round-trips
        assert json.dumps(Prediction.from_dict(json.loads(text)).to_dict(), ensure_ascii=False) == text
    quiet = read_predictions(run_system(system, spoken, run, system_name="c", ablation="silence"))
    assert [p.asr_transcript for p in quiet] == [f"{len(spoken.load_audio(item))} samples summing to 0.0000"
                                                 for item in spoken.items]
    assert all(p.audio_from is None for p in quiet)
    assert len({p.asr_transcript for p in read_predictions(run_system(system, spoken, run, system_name="c",
                                                                       ablation="babble"))}) == 6


def test_resume_refuses_mixing_ablations(tmp_path: Path, tiny_oracle: Oracle) -> None:
    spoken = make_set(tmp_path / "s", sentiment_records(6))
    system, run = _cascade(tiny_oracle), tmp_path / "run"
    run_system(system, spoken, run, system_name="c", ablation="swap", seed=0, limit=4)
    run_system(system, spoken, run, system_name="c", ablation="swap", seed=0, limit=4)  # same: resumes
    with pytest.raises(InterpError, match="another audio ablation"):
        run_system(system, spoken, run, system_name="c", ablation="swap", seed=1, limit=4)
    with pytest.raises(InterpError, match="swapped over other items"):
        run_system(system, spoken, run, system_name="c", ablation="swap", seed=0, limit=6)
    sidecar = run / "c+swap" / "s.json"
    assert read_sidecar(sidecar)["status"] == "done"  # a refused resume leaves the finished run as it was
    (run / "c").mkdir()  # a clean folder whose sidecar says silence (hand-moved files): refused
    (run / "c" / "s.json").write_text(sidecar.read_text().replace('"swap"', '"silence"'))
    with pytest.raises(InterpError, match="another audio ablation"):
        run_system(system, spoken, run, system_name="c")


def test_text_readers_and_too_small_swaps_are_refused(tmp_path: Path, tiny_oracle: Oracle) -> None:
    spoken = make_set(tmp_path / "s", sentiment_records(3))
    with pytest.raises(InterpError, match="reads gold transcript, not the audio"):
        run_system(tiny_oracle, spoken, tmp_path / "run", system_name="o", ablation="silence")
    with pytest.raises(InterpError, match="at least 2 items"):
        run_system(_cascade(tiny_oracle), spoken, tmp_path / "run", system_name="c", ablation="swap", limit=1)
    with pytest.raises(InterpError, match="unknown ablation"):
        run_system(_cascade(tiny_oracle), spoken, tmp_path / "run", system_name="c", ablation="reverse")
    assert not (tmp_path / "run").exists()


def test_stats_report_each_ablation_beside_its_clean_run(tmp_path: Path, tiny_oracle: Oracle) -> None:
    """stats.json's "ablations": accuracy with CI and kappa with the clean answers on the same items; the
    ablated runs stay out of the systems compared (and of the McNemar family)."""
    spoken = make_set(tmp_path / "s", sentiment_records(8))
    system, run = _cascade(tiny_oracle), tmp_path / "run"
    clean = read_predictions(run_system(system, spoken, run, system_name="c"))
    run_system(tiny_oracle, spoken, run, system_name="o")
    swapped = read_predictions(run_system(system, spoken, run, system_name="c", ablation="swap"))
    run_system(system, make_set(tmp_path / "t", sentiment_records(3)), run, system_name="c", ablation="silence")
    stats = run_statistics(run, n_boot=100)
    assert stats["systems"] == ["c", "o"] and stats["sets"]["s"]["systems"] == ["c", "o"]
    assert stats["fdr"]["m"] == 1 and "t" not in stats["sets"]
    rows = {(row["folder"], row["set"]): row for row in stats["ablations"]}
    assert set(rows) == {("c+swap", "s"), ("c+silence", "t")}
    row = rows["c+swap", "s"]
    assert (row["system"], row["ablation"], row["n"], row["seed"]) == ("c", "swap", 8, 0)
    assert row["accuracy"] == pytest.approx(np.mean([p.correct for p in swapped]))
    assert row["accuracy_ci"][0] <= row["accuracy"] <= row["accuracy_ci"][1]
    assert row["clean_accuracy"] == pytest.approx(np.mean([p.correct for p in clean]))
    assert row["kappa_with_clean"] == pytest.approx(cohen_kappa([p.prediction for p in swapped],
                                                                [p.prediction for p in clean]))
    assert row["kappa_ci"][0] <= row["kappa_with_clean"] <= row["kappa_ci"][1]
    lonely = rows["c+silence", "t"]  # no clean run of that set: accuracy only
    assert lonely["n"] == 3 and lonely["kappa_with_clean"] is None and lonely["clean_accuracy"] is None
    assert set(lonely) >= {"system", "ablation", "set", "accuracy", "accuracy_ci", "kappa_with_clean", "n"}


# --- the CLI -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_items, extra, message", [
    (3, ("--ablate", "reverse"), "unknown ablation 'reverse'; choose one of silence, babble, swap"),
    (1, ("--ablate", "swap"), "--ablate swap needs at least 2 items"),
    (3, ("--ablate", "silence", "--systems", "tiny-ultravox,oracle"), "oracle reads the transcript"),
])
def test_bad_ablations_are_one_line_and_write_nothing(tmp_path: Path, n_items: int, extra: tuple[str, ...],
                                                      message: str) -> None:
    spoken = make_set(tmp_path / "s", sentiment_records(n_items))
    systems = () if "--systems" in extra else ("--systems", "tiny-ultravox")
    result = run_cli("behave", *systems, "--data", spoken.root, "--out", tmp_path / "run", *extra)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:"), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# --- a planted outcome on the real mini cascade -------------------------------------------------------------------


@pytest.mark.slow
def test_mini_cascade_answers_what_it_hears(tmp_path: Path, sentiment_set: Path) -> None:
    """The mini cascade (Whisper-base -> SmolLM2) depends on its audio alone: under swap each item gets the
    clean answer of the item it heard, and under silence every item the same answer (Whisper hears one text in
    zeros of any length: "you" for this set), so its accuracy is the share of that label."""
    run = tmp_path / "run"
    for extra in ((), ("--ablate", "swap"), ("--ablate", "silence")):
        result = run_cli("behave", "--systems", "mini-cascade", "--data", sentiment_set, "--out", run,
                         "--prompts", "few-shot", *extra)
        assert result.returncode == 0, result.stderr
    assert "mini-cascade+swap" in result.stdout or "mini-cascade+silence" in result.stdout
    clean = {p.id: p for p in read_predictions(run / "mini-cascade" / "sentiment.jsonl")}
    swapped = read_predictions(run / "mini-cascade+swap" / "sentiment.jsonl")
    quiet = read_predictions(run / "mini-cascade+silence" / "sentiment.jsonl")
    accuracy = np.mean([p.correct for p in clean.values()])
    assert len(clean) == len(swapped) == len(quiet) == 12 and accuracy >= 0.7
    assert all(p.audio_from not in (None, p.id) for p in swapped)
    follows = np.mean([p.prediction == clean[p.audio_from].prediction for p in swapped])
    assert follows >= 0.8
    assert len({p.prediction for p in quiet}) == 1
    shared = np.mean([p.label == quiet[0].prediction for p in quiet])
    assert np.mean([p.correct for p in quiet]) == pytest.approx(shared)
    result = run_cli("stats", run, "--n-boot", "200", "--no-figures")
    assert result.returncode == 0, result.stderr
    assert "ablation mini-cascade+swap" in result.stdout and "κ with clean" in result.stdout
    rows = {row["ablation"]: row for row in json.loads((run / "stats.json").read_text())["ablations"]}
    assert rows["silence"]["kappa_with_clean"] == pytest.approx(0.0)
    assert rows["swap"]["clean_accuracy"] == pytest.approx(accuracy) and rows["swap"]["n"] == 12
    print(f"clean {accuracy:.3f} swap {rows['swap']['accuracy']:.3f} (follows the heard item {follows:.3f}, "
          f"kappa {rows['swap']['kappa_with_clean']:.3f}) silence {rows['silence']['accuracy']:.3f}")
