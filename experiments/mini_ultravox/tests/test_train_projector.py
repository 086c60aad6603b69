"""train_projector.py at toy scale on the real mini stack: log fields, exact resume after a stop,
same seed → same losses, exported projector loads strictly."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from experiments.mini_ultravox import DATA
from experiments.mini_ultravox import check_projector as check
from experiments.mini_ultravox import plot_projector_training as plot
from experiments.mini_ultravox import projector_fit_gap as fit_gap
from experiments.mini_ultravox import train_projector as tp
from interp.models.ultravox import UltravoxProjector

pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parents[3]


_WORDNET_LINES = {
    "noun": ['  1 This software and database is being provided to you, the LICENSEE, by Princeton University.',
             '00002137 04 n 02 abstraction 0 | a general concept; "the lighthouse keeper painted the railings '
             'every spring"; "too short"',
             '00002452 03 n 01 thing 0 | a separate entity; "a gull circled slowly above the fishing boats"'],
    "verb": ['00001740 29 v 01 breathe 0 | draw air; "she breathed the cold air of the mountain deeply"'],
    "adj": ['00001740 00 a 01 able 0 | having the means; "able to get a grip on the wet rock at last."'],
    "adv": ['00001740 02 r 01 quickly 0 | rapidly; "the 3 children ran quickly down to the river bank"'],
}


def _wordnet(root: Path) -> Path:
    """A WordNet-format dict folder holding a few glosses (licence line, examples too short, with digits)."""
    root.mkdir(parents=True, exist_ok=True)
    for part, lines in _WORDNET_LINES.items():
        (root / f"data.{part}").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return root


def _fortunes(root: Path) -> Path:
    """A fortune folder: cookies split by "%" lines, an attribution, a sentence with digits, one too short, an
    index file (.dat) and the ascii-art file (both never read)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wisdom").write_text(
        "A good reputation is worth more than\nall the money in the bank.  Never promise more than you can keep.\n"
        "%\nThe early bird gets the worm, but the second mouse gets the cheese.\n\t\t-- Steven Wright\n"
        "%\nYou have 3 new messages waiting for you.\n%\nToo short to keep.\n%\n")
    (root / "wisdom.dat").write_bytes(b"\x00\x02binary index")
    (root / "ascii-art").write_text("Nobody should ever hear this picture spoken aloud by a voice.\n%\n")
    return root


def _linked_copy(work: Path, new: Path) -> Path:
    """A work folder holding copies of `work`'s sentence lists and links to its shards (data prepared once)."""
    (new / "shards").mkdir(parents=True)
    for name in ("sentences.json", "extra_sentences.json"):
        shutil.copy(work / name, new / name)
    for shard in (work / "shards").iterdir():
        (new / "shards" / shard.name).symlink_to(shard)
    return new


def _losses(work: Path) -> list[tuple[int, float, float | None, float | None, float]]:
    lines = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"], e.get("ce"), e.get("kl"), e["ctc"]) for e in lines if "loss" in e]


def test_toy_run_logs_resumes_exactly_and_exports(tmp_path) -> None:
    common = ["--n-train", "4", "--n-val", "2", "--ctc-steps", "2", "--ctc-batch-size", "3", "--steps", "3",
              "--batch-size", "2", "--kl-batch", "1",
              "--lm-fraction", "0.5", "--eval-every", "2", "--eval-items", "1", "--threads", "1", "--seed", "0",
              "--augment", "--n-extra", "2", "--wordnet", str(_wordnet(tmp_path / "wordnet"))]
    a, b = tmp_path / "a", tmp_path / "b"
    exported = tmp_path / "out" / "projector.safetensors"
    result = tp.main(["--work", str(a), *common, "--export", str(exported)])
    assert result["completed"] and result["step"] == 5

    entries = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    steps = [e for e in entries if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5]
    # Phase 1 (CTC alignment, no LLM pass), then phase 2 (cross-entropy + KL + CTC).
    for entry in steps[:2]:
        assert {"step", "loss", "ctc", "lr", "items_per_s", "elapsed_s"} <= set(entry) and "ce" not in entry
        assert entry["loss"] == entry["ctc"] > 0
    pool = tp.training_pool(a)
    for k, entry in enumerate(steps[2:]):
        assert {"step", "loss", "ce", "kl", "ctc", "lr", "items_per_s", "elapsed_s"} <= set(entry)
        assert entry["ce"] > 0 and entry["ctc"] > 0
        # The KL row (--kl-batch 1: the batch's first item) exists only when that item has teacher logits.
        first = pool[tp.batch_indices(0, k, 2, len(pool))[0]]
        assert (entry["kl"] > 0) == ("kl_idx" in first)
        assert entry["loss"] == pytest.approx(entry["ce"] + entry["kl"] + 0.5 * entry["ctc"], rel=1e-5)
    assert any(entry["kl"] > 0 for entry in steps[2:])
    assert any("val_wer" in e and "val_ctc_wer" in e and e["step"] == 2 for e in entries)
    assert any(e.get("final") for e in entries)
    prep = json.loads((a / "prep_stats.json").read_text())
    assert prep["utterances"] == 8 and prep["counts"]["extra"] == {"wordnet": 2}
    # The WordNet extras are spoken and encoded like training items, without teacher logits (no KL rows).
    extra = tp.load_split(a, "extra")
    assert len(extra) == 2 and all(it["source"] == "wordnet" and "kl_idx" not in it and it["enc"].shape[1] == 512
                                   for it in extra)
    assert {it["text"] for it in extra} <= set(tp.wordnet_sentences(tmp_path / "wordnet", set()))

    # --sentences takes a's sentence list (gzipped, as data/ ships one) only when made with these arguments.
    given = tmp_path / "sentences.json.gz"
    given.write_bytes(gzip.compress((a / "sentences.json").read_bytes()))
    with pytest.raises(SystemExit, match="was made with .*give the arguments it was made with"):
        tp.main(["--work", str(tmp_path / "f"), *common, "--n-train", "5", "--sentences", str(given), "--prep-only"])
    # The cached data is reused (no second prep), then the run stops at its budget after one step and resumes.
    b.mkdir()
    shutil.copy(a / "extra_sentences.json", b / "extra_sentences.json")
    shutil.copytree(a / "shards", b / "shards")
    stopped = tp.main(["--work", str(b), *common, "--sentences", str(given), "--max-minutes", "0"])
    assert json.loads((b / "sentences.json").read_text()) == json.loads((a / "sentences.json").read_text())
    assert stopped["step"] == 1 and not stopped["completed"]
    assert (b / "checkpoint.safetensors").exists()
    resumed = tp.main(["--work", str(b), *common, "--no-final-eval"])
    assert resumed["completed"] and resumed["step"] == 5
    # Same seed → identical losses, and the resumed run continues exactly where the first left off.
    assert _losses(b) == _losses(a)

    # --init: a run that starts from the exported projector (lr 0, so one step leaves it as it was), in a
    # folder that links a's shards and grows them by --n-extra-2 (WordNet sentences a's block did not pick).
    c = _linked_copy(a, tmp_path / "c")
    continued = [*common, "--init", str(exported), "--ctc-steps", "0", "--steps", "1", "--lr", "0", "--no-final-eval",
                 "--n-extra-2", "2", "--n-fortunes", "2", "--n-fortunes-2", "1",
                 "--fortunes", str(_fortunes(tmp_path / "fortunes")), "--draw-from", "fortune,fortune2"]
    assert tp.main(["--work", str(c), *continued, "--export", str(c / "out.safetensors")])["step"] == 1
    # its card nests the card of the projector it started from
    assert (json.loads((c / "out.json").read_text())["init_card"]
            == json.loads(exported.with_suffix(".json").read_text()))
    grown = tp.training_pool(c)
    assert [it["id"] for it in grown[:len(pool)]] == [it["id"] for it in pool]
    block_2, fortune = grown[len(pool):-3], grown[-3:]
    assert [it["id"] for it in block_2] == ["extra2-00000", "extra2-00001"]
    assert [it["id"] for it in fortune] == ["fortune-00000", "fortune-00001", "fortune2-00000"]
    assert all(it["source"] == "fortunes" and "kl_idx" not in it for it in fortune)
    # the second fortune block holds the one sentence the first left: all three, each once
    assert sorted(it["text"] for it in fortune) == tp.fortune_sentences(tmp_path / "fortunes", set())
    # --draw-from fortune,fortune2: its batches come from the fortune blocks alone (the card says how many
    # items), and the card counts the utterances each source gave
    card = json.loads((c / "out.json").read_text())["data"]
    assert card["drawn_utterances"] == 3
    assert card["real_text"].endswith(
        "; 4 WordNet 3.0 usage examples; 3 fortune-cookie sentences (Debian fortunes)")
    assert not {it["text"] for it in block_2} & {it["text"] for it in extra}
    assert all("kl_idx" not in it and it["enc"].shape[1] == 512 for it in block_2)
    assert sorted(p.name for p in (c / "shards").iterdir() if not p.is_symlink()) == \
        ["extra2-0000.json", "extra2-0000.safetensors", "fortune-0000.json", "fortune-0000.safetensors",
         "fortune2-0000.json", "fortune2-0000.safetensors"]
    with pytest.raises(SystemExit, match="--n-extra-2 3: wordnet gives only 2 new sentences"):
        tp.main(["--work", str(_linked_copy(a, tmp_path / "e")), *common, "--n-extra-2", "3", "--prep-only"])
    assert {k: v.tolist() for k, v in load_file(str(c / "checkpoint.safetensors")).items()} == \
        {k: v.tolist() for k, v in load_file(str(exported)).items()}
    assert json.loads((c / "train_config.json").read_text())["init"].startswith(f"{exported} (sha256 ")
    # --first-batch k: a continuation's step 1 draws the batch its k+1-th step draws without it (lr 0: the
    # projector stays the exported one, so equal items give equal losses; the batches differ here).
    drawn = {}
    for first, steps in ((0, 2), (1, 1)):
        folder = _linked_copy(a, tmp_path / f"first-batch-{first}")
        tp.main(["--work", str(folder), *common, "--init", str(exported), "--ctc-steps", "0", "--steps", str(steps),
                 "--lr", "0", "--no-final-eval", "--first-batch", str(first)])
        drawn[first] = [loss for _, loss, *_ in _losses(folder)]
    assert drawn[1] == drawn[0][1:] and drawn[0][0] != drawn[0][1]
    for option in ("--init", "--sentences"):
        with pytest.raises(SystemExit, match=f"{option} .*missing.json: no such file"):
            tp.main(["--work", str(tmp_path / "d"), *common, option, str(tmp_path / "missing.json")])
    assert not (tmp_path / "d").exists()

    state = load_file(str(exported))
    projector = UltravoxProjector(tp.load_stack()["model"].config)
    projector.load_state_dict(state, strict=True)
    assert set(state) == set(tp.load_stack()["model"].multi_modal_projector.state_dict())
    assert all(t.dtype == torch.float32 for t in state.values())
    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["training"]["steps_done"] == 5 and card["val_wer"] is not None and card["val_ctc_wer"] is not None

    # projector_fit_gap.py: its held-out figures of the exported projector are the run's final validation.
    assert fit_gap.spread(list(range(9)), 3) == [0, 3, 6] and fit_gap.spread([1, 2], 5) == [1, 2]
    gap = fit_gap.main([str(exported), "--work", str(a), "--items", "2", "--threads", "1"])
    figures = gap[str(exported)]
    held_out_figures = figures["held-out"]
    assert held_out_figures["val_wer"] == card["val_wer"] and held_out_figures["val_ctc_wer"] == card["val_ctc_wer"]
    assert figures["train"]["items"] == 2
    assert {s["id"] for s in figures["train"]["samples"]} <= {it["id"] for it in pool}
    sources = figures["train"]["by_source"]
    assert sum(f["items"] for f in sources.values()) == 2 and set(sources) <= {"template", "lm", "real", "wordnet"}
    held_out = figures["held-out"]["by_source"]
    assert sum(f["items"] for f in held_out.values()) == 2 and set(held_out) <= {"template-heldout", "lm-heldout"}


def test_real_text_sentences_are_plain_sorted_and_exclude_what_is_seen() -> None:
    """Source (c): real English sentences from the Python reference and package descriptions, filtered like
    SmolLM2's samples; the ones already seen (suite items, other sources) are left out."""
    found = tp.real_text_sentences(set())
    assert len(found) >= 300 and found == sorted(set(found))
    assert all(tp._CLEAN.match(s) and 6 <= len(s.split()) <= 25 and s[0].isupper() for s in found)
    assert not any(ch.isdigit() for s in found for ch in s)
    assert tp.real_text_sentences(set(found[:10])) == found[10:]
    # never this project's README (installed as its description): it changes with every commit
    readme = " ".join((_ROOT / "README.md").read_text(encoding="utf-8").split())
    assert not [s for s in found if s in readme]


def test_wordnet_sentences_are_the_glosses_examples_made_plain(tmp_path) -> None:
    """Source (d): the quoted usage examples of WordNet's data files, capitalised and ended with a full stop,
    same filter as the other sources (6-25 words, no digits); sorted, none in `seen`; no WordNet, one clear exit."""
    root = _wordnet(tmp_path / "dict")
    found = tp.wordnet_sentences(root, set())
    assert found == ["A gull circled slowly above the fishing boats.", "Able to get a grip on the wet rock at last.",
                     "She breathed the cold air of the mountain deeply.",
                     "The lighthouse keeper painted the railings every spring."]
    assert tp.wordnet_sentences(root, {found[0]}) == found[1:]
    with pytest.raises(SystemExit, match="wordnet-base"):
        tp.wordnet_sentences(tmp_path / "missing", set())


def test_fortune_sentences_are_the_cookies_sentences(tmp_path) -> None:
    """Source (e): the cookies' sentences, attributions and the ascii-art file left out, same filter as the other
    sources; sorted, none in `seen`; no fortune files, one clear exit."""
    root = _fortunes(tmp_path / "fortunes")
    found = tp.fortune_sentences(root, set())
    assert found == ["A good reputation is worth more than all the money in the bank.",
                     "Never promise more than you can keep.",
                     "The early bird gets the worm, but the second mouse gets the cheese."]
    assert tp.fortune_sentences(root, {found[1]}) == [found[0], found[2]]
    with pytest.raises(SystemExit, match="apt-get install fortunes"):
        tp.fortune_sentences(tmp_path / "missing", set())


def test_draw_from_keeps_the_named_splits_in_pool_order() -> None:
    pool = [{"id": i} for i in ("train-00000", "train-00001", "extra-00000", "fortune-00000", "fortune-00001")]
    assert tp.drawn_pool(pool, None) is pool
    assert [it["id"] for it in tp.drawn_pool(pool, "fortune,train")] == \
        ["train-00000", "train-00001", "fortune-00000", "fortune-00001"]
    with pytest.raises(SystemExit, match="no extra2 split .it has extra, fortune, train."):
        tp.drawn_pool(pool, "train,extra2")


def test_work_folders_made_before_a_key_existed_still_resume(tmp_path) -> None:
    """A config recorded before --stack, --n-extra and --augment existed matches their values of then only."""
    path = tmp_path / "data_config.json"
    path.write_text(json.dumps({"n_train": 3000, "seed": 0}))
    tp._lock_config(path, {"stack": "mini-ultravox", "n_train": 3000, "n_extra": 0, "seed": 0})
    assert json.loads(path.read_text())["n_extra"] == 0  # now recorded
    path.write_text(json.dumps({"n_train": 3000, "seed": 0}))
    with pytest.raises(SystemExit, match="differs"):
        tp._lock_config(path, {"stack": "mini-ultravox", "n_train": 3000, "n_extra": 6000, "seed": 0})


def test_ctc_head_reads_token_embeddings_back_and_scores_them_low() -> None:
    """Audio positions equal to the transcript's token embeddings, separated by the blank's, read back as the
    transcript; their CTC loss is far below that of the same positions in reverse order."""
    stack = tp.load_stack()
    text = "The quiet harbour opened early"
    item = {"tokens": stack["tokenizer"](text, add_special_tokens=False)["input_ids"]}
    vocab = tp.ctc_vocabulary(stack, [item])
    embeddings = stack["model"].get_input_embeddings().weight.detach()
    blank = embeddings[vocab[0]]
    rows = [row for t in item["tokens"] for row in (embeddings[t], blank)]
    audio = 8 * torch.stack(rows)  # scaled so the softmax over the vocabulary is peaked
    assert tp.ctc_read(stack, audio, len(rows), vocab) == text
    item["enc"] = torch.zeros(8 * len(rows), 512)  # stack 8: encoder frames for exactly len(rows) positions
    forward = float(tp.ctc_loss(stack, audio[None], [item], vocab))
    backward = float(tp.ctc_loss(stack, audio.flip(0)[None], [item], vocab))
    assert forward < 0.05 < backward


def test_shared_head_runs_once_and_changes_nothing_but_rounding() -> None:
    """The positions every row shares (system prompt and chat template) run once as a KV cache: the suffix
    logits and the gradient reaching the audio equal those of full rows, for the repeat prompt alone and for
    mixed KL prompts whose heads part where their instructions begin; a plain prompt shares nothing."""
    stack = tp.load_stack()
    tok = stack["tokenizer"]
    prompts = tp.kl_prompts()
    assert tp.shared_head(tok, [tp.REPEAT_PROMPT]) == len(tp.prompt_parts(tok, tp.REPEAT_PROMPT)[0]) > 20
    mixed = [tp.REPEAT_PROMPT, prompts[3], prompts[6]]  # chat prompts; 0-2 and 8-9 are plain
    assert 20 < tp.shared_head(tok, mixed) < min(len(tp.prompt_parts(tok, p)[0]) for p in mixed)
    assert tp.shared_head(tok, [tp.REPEAT_PROMPT, prompts[-2]]) == 0
    generator = torch.Generator().manual_seed(0)
    items = [{"enc": torch.zeros(n, 512)} for n in (40, 64, 24)]
    suffixes = [tok(text, add_special_tokens=False)["input_ids"]
                for text in ("a gull circled above", "the boats came home late", "yes")]
    for row_prompts in ([tp.REPEAT_PROMPT] * 3, mixed):
        audio = torch.randn(3, 8, 576, generator=generator).requires_grad_(True)
        embeds, mask, starts = tp.build_rows(stack, audio, items, row_prompts, suffixes)
        counts = [len(s) for s in suffixes]
        full = tp.suffix_logits(stack, embeds, mask, starts, counts)
        (full_grad,) = torch.autograd.grad(sum(lg.logsumexp(-1).sum() for lg in full), audio)
        embeds, mask, starts = tp.build_rows(stack, audio, items, row_prompts, suffixes)
        cached = tp.suffix_logits(stack, embeds, mask, starts, counts, tp.shared_head(tok, row_prompts))
        (cached_grad,) = torch.autograd.grad(sum(lg.logsumexp(-1).sum() for lg in cached), audio)
        assert all(torch.allclose(a, b, atol=1e-3, rtol=1e-4) for a, b in zip(full, cached))
        assert float((cached_grad - full_grad).norm() / full_grad.norm()) < 1e-4 and float(full_grad.norm()) > 0

    # a whole phase-2 step: repeat rows, KL rows under chat and plain prompts (a pass per prompt), CTC
    kl_items = [{"enc": torch.randn(8 * n, 512, generator=generator), "tokens": suffix,
                 "response": suffix, "kl_prompt": prompt, "kl_idx": torch.randint(0, 49152, (len(suffix), 32)),
                 "kl_logp": torch.log(0.9 * torch.softmax(torch.randn(len(suffix), 32, generator=generator), -1))}
                for n, suffix, prompt in zip((5, 8, 3), suffixes, (3, 0, 3))]
    projector = tp.fresh_projector(stack, 0)
    vocab = tp.ctc_vocabulary(stack, kl_items)
    losses = [{k: float(v.detach()) for k, v in tp.step_loss(stack, projector, kl_items, vocab, distil=True,
                                                             kl_batch=3, prompts=prompts, reuse_head=reuse)[1].items()}
              for reuse in (False, True)]
    assert losses[0]["kl"] > 0
    assert all(abs(losses[0][k] - losses[1][k]) < 1e-4 * losses[0][k] for k in losses[0])


def test_loss_curve_figure_draws_both_phases_and_measures_a_rerun(tmp_path, capsys) -> None:
    """plot_projector_training.py: phase-1 lines (CTC only) and phase-2 lines both drawn; a rerun that retraced
    the run reports 0, one that differs reports the largest difference over the shared steps."""
    log = [{"step": 1, "loss": 5.0, "ctc": 5.0}, {"step": 2, "loss": 4.0, "ctc": 4.0},
           {"step": 2, "val_wer": 1.0, "val_ctc_wer": 0.9},
           {"step": 3, "loss": 3.0, "ce": 2.0, "kl": 0.5, "ctc": 1.0}]
    runs = {}
    for name, entries in (("run", log), ("same", log[:2]), ("other", [{**log[0], "loss": 5.25}, *log[1:]])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
        runs[name] = tmp_path / name
    differences = plot.main([str(runs["run"]), str(runs["same"]), str(runs["other"]), "--out",
                             str(tmp_path / "curve.html"), "--smooth", "1"])
    assert differences == {str(runs["same"]): 0.0, str(runs["other"]): 0.25}
    figure = plot.figure({"run": log}, smooth=1)
    traces = {trace.name: list(trace.y) for trace in figure.data}
    assert traces["run: ctc (mean of 1)"] == [5.0, 4.0, 1.0] and traces["run: ce (mean of 1)"] == [2.0]
    assert traces["run: validation WER, CTC reading"] == [0.9]
    assert "2 steps shared" in capsys.readouterr().out
    # A continued run (--init) is drawn after the one it started from: "run+same" numbers same's steps 4, 5.
    chained = plot.read_chain(f"{runs['run']}+{runs['same']}")
    assert [(e["step"], e.get("loss")) for e in chained][4:] == [(4, 5.0), (5, 4.0)]


def test_augment_frames_is_seeded_leaves_room_for_ctc_and_keeps_the_cache() -> None:
    """The training-time perturbation: a function of (seed, step, row), lengths within the speed range, enough
    audio positions for the transcript, some values zeroed, scale kept, and the cached frames untouched."""
    g = torch.Generator().manual_seed(0)
    periods, phases = 20 + 80 * torch.rand(512, generator=g), 6.3 * torch.rand(512, generator=g)
    enc = torch.sin(2 * torch.pi * torch.arange(300.0)[:, None] / periods + phases).half()  # smooth, like states
    cached = enc.clone()
    first = tp.augment_frames(enc, 20, 8, 0, 5, 1)
    assert torch.equal(first, tp.augment_frames(enc, 20, 8, 0, 5, 1)) and torch.equal(enc, cached)
    assert not torch.equal(first, tp.augment_frames(enc, 20, 8, 0, 6, 1))
    assert not torch.equal(first, tp.augment_frames(enc, 20, 8, 1, 5, 1))
    lengths = [tp.augment_frames(enc, 20, 8, 0, s, 0).shape[0] for s in range(60)]
    assert 0.9 * 293 <= min(lengths) and max(lengths) <= 1.2 * 300 + 1 and len(set(lengths)) > 20
    assert min(lengths) < 290 and max(lengths) > 330  # both slower and faster than the original
    # A transcript of 34 tokens fills 300 frames (38 positions): it is never squeezed past 0.9 per position.
    for s in range(60):
        positions = -(-tp.augment_frames(enc, 34, 8, 0, s, 0).shape[0] // 8)
        assert 34 / positions <= 0.9
    zeroed = float((first == 0).float().mean())
    assert 0.08 < zeroed < 0.2
    assert float(first.abs().mean()) == pytest.approx(float(enc.float().abs().mean()), rel=0.15)


def test_shipped_held_out_split_is_apart_from_training() -> None:
    """data/mini_ultravox_heldout.json (what check_projector.py scores by default): 120 sentences from the
    held-out template family and SmolLM2 topics, none a suite's, spoken with voices outside the training
    ranges (vary_settings): piper slower or faster and noisier or cleaner, espeak variants training never used."""
    shipped = json.loads((DATA / "mini_ultravox_heldout.json").read_text(encoding="utf-8"))
    items = shipped["items"]
    assert len(items) == 120 and {it["source"] for it in items} == {"lm-heldout", "template-heldout"}
    assert sum(it["source"] == "lm-heldout" for it in items) == 60
    assert not {it["text"] for it in items} & tp.suite_texts()
    assert len({it["text"] for it in items}) == 120
    _assert_voices_outside_training(items)

    # The shipped projector's training sentences (train_projector.py --sentences) are those of the same work
    # folder: its validation split is this file's, and no training sentence is held out or a suite's.
    trained = json.loads(gzip.decompress((DATA / "sentences.json.gz").read_bytes()))
    assert trained["spec"] == shipped["spec"] and trained["items"]["val"] == items
    train_texts = {it["text"] for it in trained["items"]["train"]}
    assert len(trained["items"]["train"]) == 3000 and len(train_texts) == 3000
    assert not train_texts & {it["text"] for it in items} and not train_texts & tp.suite_texts()



def _assert_voices_outside_training(items: list[dict]) -> None:
    """Piper slower or faster and noisier or cleaner than vary_settings makes it (a value rounded to 3 decimals
    may land on a range's end), espeak variants it never uses."""
    for it in items:
        settings = it["settings"]
        if it["engine"] == "piper":
            assert not 0.85 < settings["length_scale"] < 1.2 and not 0.4 < settings["noise_scale"] < 0.8
        else:
            assert settings["voice"].rsplit("+", 1)[1] in {"m5", "m6", "f5"}
            assert not 140 <= settings["rate_wpm"] < 200 and not 35 <= settings["pitch"] < 65


def test_more_held_out_utterances_are_new_and_made_like_the_shipped_ones() -> None:
    """check_projector.py --more: the shipped 120 and 380 more (extend_heldout.py), none a shipped
    held-out sentence, a suite item or a training sentence of the shipped list, voices outside the training
    ranges."""
    items = check.held_out_items(None, None, more=True)
    assert items[:120] == check.held_out_items(None, None) and len(items) == 500
    assert len({it["id"] for it in items}) == len({it["text"] for it in items}) == 500
    more = items[120:]
    assert sum(it["source"] == "lm-heldout" for it in more) == sum(it["source"] == "template-heldout" for it in more)
    trained = json.loads(gzip.decompress((DATA / "sentences.json.gz").read_bytes()))
    texts = {it["text"] for it in more}
    assert not texts & tp.suite_texts() and not texts & {it["text"] for it in trained["items"]["train"]}
    _assert_voices_outside_training(more)


def test_a_second_block_needs_the_first_of_its_source(capsys) -> None:
    """A second block picks from the sentences the first left, so asking for it alone is one clear error."""
    with pytest.raises(SystemExit):
        tp.parse_args(["--work", "unused", "--n-extra", "5", "--n-fortunes-2", "1"])
    assert "--n-fortunes-2 needs --n-fortunes (it picks from the fortunes sentences that block left)" in \
        capsys.readouterr().err
    assert tp.parse_args(["--work", "unused", "--n-fortunes", "2", "--n-fortunes-2", "1"]).n_fortunes_2 == 1
    with pytest.raises(SystemExit):
        tp.parse_args(["--work", "unused", "--n-fortunes", "2", "--n-fortunes-3", "1"])
    assert "--n-fortunes-3 needs --n-fortunes-2" in capsys.readouterr().err


@pytest.mark.flite
def test_flite_voices_speak_the_training_sentences_again_with_their_teacher_targets(tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    """--n-flite: the first training sentences spoken again by flite (Debian's `flite`), each keeping its KL
    prompt, so the teacher's targets are those of the sentence's first voicing and every such item carries a
    KL row; the settings change what flite says (duration stretch, mean pitch)."""
    import parselmouth

    work = tmp_path / "w"
    common = ["--work", str(work), "--n-train", "3", "--n-val", "1", "--lm-fraction", "0", "--n-flite", "2",
              "--threads", "1", "--seed", "0"]
    tp.main([*common, "--prep-only"])
    train, flite = tp.load_split(work, "train"), tp.load_split(work, "flite")
    assert [it["id"] for it in flite] == ["flite-00000", "flite-00001"]
    for first, again in zip(train, flite):
        assert again["engine"] == "flite" and again["settings"]["voice"] in tp.FLITE_VOICES
        assert (again["text"], again["kl_prompt"], again["response"]) == \
            (first["text"], first["kl_prompt"], first["response"])
        assert torch.equal(again["kl_idx"], first["kl_idx"]) and torch.equal(again["kl_logp"], first["kl_logp"])
        assert again["enc"].shape[1] == first["enc"].shape[1] and not torch.equal(again["enc"], first["enc"])
    assert [it["id"] for it in tp.training_pool(work)][-2:] == ["flite-00000", "flite-00001"]
    # Drawn from the flite split alone, every row of every step has a KL row.
    tp.main([*common, "--ctc-steps", "0", "--steps", "2", "--batch-size", "2", "--kl-batch", "2",
             "--draw-from", "flite", "--no-final-eval", "--eval-every", "100"])
    assert all(e["kl"] > 0 for e in map(json.loads, (work / "log.jsonl").read_text().splitlines()) if "kl" in e)
    # projector_fit_gap.py reads the flite voicings apart: a new voice of a heard sentence is its own split.
    exported = tmp_path / "p.safetensors"
    save_file(tp.fresh_projector(tp.load_stack(), 0).state_dict(), str(exported))
    gap = fit_gap.main([str(exported), "--work", str(work), "--items", "2", "--threads", "1"])
    figures = gap[str(exported)]
    assert list(figures) == ["train", "flite", "held-out"]
    assert [s["id"] for s in figures["flite"]["samples"]] == ["flite-00000", "flite-00001"]
    assert not any(s["id"].startswith("flite") for s in figures["train"]["samples"])

    text = "The lighthouse keeper painted the railings every spring."
    slow, fast = (tp.flite_speak(text, {"voice": "rms", "duration_stretch": d}) for d in (1.3, 0.8))
    assert slow.dtype == "float32" and len(slow) / len(fast) == pytest.approx(1.3 / 0.8, rel=0.15)

    def mean_pitch(f0: float) -> float:
        samples = tp.flite_speak(text, {"voice": "slt", "duration_stretch": 1.0, "f0_mean": f0})
        f = parselmouth.Sound(samples.astype("float64"), 16_000).to_pitch().selected_array["frequency"]
        return float(f[f > 0].mean())

    assert mean_pitch(150) + 40 < mean_pitch(230)
    with pytest.raises(SystemExit):
        tp.parse_args(["--work", "unused", "--n-train", "3", "--n-flite", "4"])
    assert "--n-flite 4: there are only 3 training sentences" in capsys.readouterr().err
    monkeypatch.setattr(tp.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install flite"):
        tp.flite_speak(text, {"voice": "slt", "duration_stretch": 1.0})


@pytest.mark.flite
def test_a_flite_item_whose_first_voicing_was_skipped_gets_the_teacher_run_for_it(tmp_path, monkeypatch) -> None:
    """A training sentence whose first voicing is over MAX_SECONDS is skipped, so its train shard holds no
    teacher targets to copy: its flite voicing must get targets of its own, from the teacher."""
    speak = tp.speak

    def first_voicing_too_long(item):
        return np.zeros(int(16_000 * (tp.MAX_SECONDS + 1)), dtype="float32") \
            if item["id"] == "train-00000" else speak(item)

    monkeypatch.setattr(tp, "speak", first_voicing_too_long)
    work = tmp_path / "w"
    tp.main(["--work", str(work), "--n-train", "3", "--n-val", "1", "--lm-fraction", "0", "--n-flite", "2",
             "--threads", "1", "--seed", "0", "--prep-only"])
    train, flite = tp.load_split(work, "train"), tp.load_split(work, "flite")
    assert [it["id"] for it in train] == ["train-00001", "train-00002"]
    assert [it["id"] for it in flite] == ["flite-00000", "flite-00001"]
    args = tp.parse_args(["--work", str(work)])
    (own,) = tp.teacher_targets(tp.load_stack(), [flite[0]], tp.kl_prompts(), args.top_k, args.kl_max_tokens)
    assert flite[0]["response"] == own["response"]
    assert torch.equal(flite[0]["kl_idx"], own["idx"].long()) and torch.equal(flite[0]["kl_logp"], own["logp"])
    assert torch.equal(flite[1]["kl_idx"], train[0]["kl_idx"])  # the other one's are still copied
