"""The training features on the tiny model and slices of the real data: masked-word pretraining, distillation from
cached teacher targets (TF-IDF or a checkpoint; KL, MSE, feature matching), gradient-norm monitoring with clipping,
length-grouped batches, and the reproducible prefix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import mahia.train.distill as distill
from mahia.data import load_reviews
from mahia.model import build_model, get_config, load_checkpoint, save_checkpoint
from mahia.model.checkpoint import read_checkpoint_metadata
from mahia.model.config import CLS_ID, FIRST_WORD_ID
from mahia.model.mahia_x import ModelOutput
from mahia.train import TrainConfig, train
from mahia.train.cli import main as train_cli
from mahia.train.losses import feature_matching_loss, logit_mse_loss, training_loss
from mahia.train.monitor import STEP_LOG_NAME, block_name, gradient_norms, parameter_blocks
from mahia.train.optim import epoch_batches
from mahia.train.pretrain import IGNORE, mask_id, mask_words, masked_word_loss
from mahia.train.reproduce import compare_prefix
from mahia.train.trainer import PREFIX_STEPS, PRETRAINED_NAME

TINY = TrainConfig(model="tiny", batch_size=8, max_text_tokens=48, lr=3e-3, warmup_steps=2, save_every=2,
                   train_rows=32, eval_rows=24, baseline=False)


@pytest.fixture(autouse=True)
def teacher_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Teacher targets go to the test's folder, not the user's data cache."""
    folder = tmp_path / "teachers"
    monkeypatch.setattr(distill, "teacher_cache_dir", lambda: folder)
    return folder


def steps_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / STEP_LOG_NAME).read_text().splitlines()]


# --- masked-word pretraining -------------------------------------------------------------------------------------

def test_mask_words_chooses_only_words_and_replaces_them_as_bert_does() -> None:
    vocab = 4096
    ids = torch.randint(FIRST_WORD_ID, vocab, (64, 100), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = CLS_ID
    mask = torch.ones_like(ids)
    mask[:, 80:] = 0
    ids[:, 80:] = 0
    masked, targets = mask_words(ids, mask, 0.15, vocab, torch.Generator().manual_seed(1))
    chosen = targets != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 80:].any(), "never [CLS] or padding"
    assert torch.equal(targets[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen]), "positions not chosen are unchanged"
    assert chosen.sum() / (64 * 79) == pytest.approx(0.15, abs=0.01)
    to_mask = (masked[chosen] == mask_id(vocab)).float().mean()
    kept = (masked[chosen] == ids[chosen]).float().mean()
    assert to_mask == pytest.approx(0.8, abs=0.03) and kept == pytest.approx(0.1 + 0.1 / 4094, abs=0.03)
    again = mask_words(ids, mask, 0.15, vocab, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], masked) and torch.equal(again[1], targets), "seeded: the same masks"
    # The mask token is a hashed id no single token of the tokenizer has as its text.
    assert FIRST_WORD_ID <= mask_id(vocab) < vocab


def test_masked_word_loss_is_the_tied_decoder_cross_entropy_at_the_chosen_positions() -> None:
    model = build_model(get_config("tiny"), seed=3)
    inputs, _ = load_reviews()["train"].batch(np.arange(4), 24, model.config.vocab_size)
    masked, targets = mask_words(inputs["input_ids"], inputs["attention_mask"], 0.3, model.config.vocab_size,
                                 torch.Generator().manual_seed(0))
    loss, output = masked_word_loss(model, {**inputs, "input_ids": masked}, targets)
    # By hand: the final_norm states of the text positions (after the 5 tabular tokens), times the embedding.
    with torch.no_grad():
        x, token_mask = model.embedding(masked, inputs["attention_mask"], inputs["numeric"], inputs["categorical"])
    assert output.token_mask.shape[1] == x.shape[1] == 5 + masked.shape[1]
    states = []
    handle = model.final_norm.register_forward_hook(lambda m, a, out: states.append(out))
    model(**{**inputs, "input_ids": masked})
    handle.remove()
    text = states[0][:, 5:]
    chosen = targets != IGNORE
    expected = F.cross_entropy(text[chosen] @ model.embedding.text.weight.T, targets[chosen])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert model.embedding.text.weight.grad is not None and model.head.weight.grad is None


def test_pretraining_lowers_the_masked_word_loss_then_fine_tuning_starts_from_it(tmp_path: Path) -> None:
    config = TINY.replace(train_rows=16, batch_size=16, pretrain_epochs=12, pretrain_lr=1e-2, warmup_steps=1,
                          max_steps=1)
    result = train(config, tmp_path)
    records = steps_of(tmp_path)
    pretrain = [r for r in records if r["phase"] == "pretrain"]
    assert len(pretrain) == 12 and [r["phase"] for r in records[12:]] == ["finetune"]
    first, last = np.mean([r["masked_word"] for r in pretrain[:3]]), np.mean([r["masked_word"] for r in pretrain[-3:]])
    assert last < 0.9 * first, f"masked-word loss {first:.3f} -> {last:.3f}"  # measured 6.11 -> 5.06
    summary = result.metrics["pretrain"]
    assert summary["steps"] == 12 and summary["epochs"] == 12 and summary["lr"] == 1e-2
    assert set(result.metrics["grad_norms"]) == {"clip", "pretrain", "finetune"}
    pretrained, metadata = load_checkpoint(tmp_path / PRETRAINED_NAME)
    assert metadata["trained"] == "false" and "pretraining only" in metadata["label"]
    assert any(not torch.equal(a, b) for a, b in zip(pretrained.state_dict().values(),
                                                     build_model(get_config("tiny"), seed=0).state_dict().values()))
    # --init starts a run from the pretrained weights: with one step at a tiny learning rate, the result is close.
    follow = train(TINY.replace(init_checkpoint=str(tmp_path / PRETRAINED_NAME), max_steps=1, lr=1e-9),
                   tmp_path / "follow")
    after = load_checkpoint(follow.out_dir / "last.safetensors")[0].state_dict()
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in pretrained.state_dict().items())


# --- distillation ------------------------------------------------------------------------------------------------

def test_logit_mse_and_feature_matching_losses(generator: torch.Generator) -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[5.0, 7.0], [-1.0, 1.0]])
    # Centred: student [[-.5, .5], [0, 0]], teacher [[-1, 1], [-1, 1]]: squared differences .25 .25 1 1.
    assert float(logit_mse_loss(student, teacher)) == pytest.approx(2.5 / 4)
    assert float(logit_mse_loss(student + 3.0, teacher)) == pytest.approx(2.5 / 4), "a row's shift is ignored"
    features = torch.randn(6, 8, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    wider = torch.cat([features, torch.zeros(6, 8)], dim=1) @ rotation * 3.0  # other space, same similarities
    assert float(feature_matching_loss(features, wider)) == pytest.approx(0.0, abs=1e-10)
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(feature_matching_loss(a, b)) == pytest.approx(2 / 4)  # off-diagonal cosines 0 vs 1


def test_training_loss_sums_the_chosen_distillation_terms(generator: torch.Generator) -> None:
    mask = torch.ones(3, 4)
    output = ModelOutput(torch.randn(3, 2, generator=generator), (torch.randn(12, 4, generator=generator),), mask)
    labels, teacher = torch.tensor([1, 0, 1]), torch.randn(3, 2, generator=generator)
    fs, ft = torch.randn(3, 5, generator=generator), torch.randn(3, 7, generator=generator)
    parts = training_loss(output, labels, 2, 0.0, 0.0, teacher, 2.0, 0.4, ("kl", "mse", "features"), fs, ft)
    kl = F.kl_div(F.log_softmax(output.logits / 2, -1), F.log_softmax(teacher / 2, -1), log_target=True,
                  reduction="batchmean") * 4
    distill_sum = kl + logit_mse_loss(output.logits, teacher) + feature_matching_loss(fs, ft)
    assert float(parts.distill) == pytest.approx(float(distill_sum), rel=1e-5)
    assert float(parts.total) == pytest.approx(float(0.6 * F.cross_entropy(output.logits, labels) + 0.4 * distill_sum),
                                               rel=1e-5)
    # the defaults: "kl" alone at temperature 2, half of the task loss
    defaults = training_loss(output, labels, 2, 0.0, 0.0, teacher)
    assert float(defaults.distill) == pytest.approx(float(kl), rel=1e-5)
    assert float(defaults.total) == pytest.approx(float(0.5 * F.cross_entropy(output.logits, labels) + 0.5 * kl),
                                                  rel=1e-5)
    for student_features, teacher_features in ((None, None), (fs, None), (None, ft)):  # either one missing
        with pytest.raises(ValueError) as err:
            training_loss(output, labels, 2, 0.0, 0.0, teacher, modes=("features",),
                          student_features=student_features, teacher_features=teacher_features)
        assert str(err.value) == "feature matching needs the student's and the teacher's features"


def test_tfidf_teacher_is_cross_fitted_and_computed_once(teacher_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = load_reviews()
    train_rows, val = splits["train"].subset(np.arange(400)), splits["val"].subset(np.arange(200))
    targets = distill.load_teacher_targets("tfidf", train_rows, val, 48, 2, 0, torch.device("cpu"), log=lambda m: None)
    info = targets.info
    assert targets.logits.shape == (400, 2) and targets.features.shape == (400, distill.TFIDF_COMPONENTS)
    assert np.array_equal(targets.row_ids, train_rows.row_ids)
    # Out-of-fold logits rank the training rows worse than the in-sample fit, which has seen them.
    assert info["train_out_of_fold"]["roc_auc"] < info["train_in_sample_roc_auc"]
    assert info["train_out_of_fold"]["roc_auc"] > 0.5 and info["folds"] == 5
    prob = torch.softmax(targets.logits.double(), dim=-1)[:, 1]  # the [-z/2, z/2] logits keep the probability
    z = targets.logits[:, 1] - targets.logits[:, 0]
    assert torch.allclose(prob, torch.sigmoid(z.double()), atol=1e-6)
    assert [p.name for p in teacher_cache.iterdir()] == [info["cache_file"]]

    def no_refit(*args, **kwargs):
        raise AssertionError("cached: the teacher must not be fitted again")

    monkeypatch.setattr(distill, "tfidf_targets", no_refit)
    again = distill.load_teacher_targets("tfidf", train_rows, val, 48, 2, 0, torch.device("cpu"), log=lambda m: None)
    assert torch.equal(again.logits, targets.logits) and torch.equal(again.features, targets.features)
    with pytest.raises(AssertionError, match="must not be fitted again"):  # other rows: another key
        distill.load_teacher_targets("tfidf", splits["train"].subset(np.arange(399)), val, 48, 2, 0,
                                     torch.device("cpu"), log=lambda m: None)


def test_checkpoint_teacher_targets_are_its_outputs_on_each_row(tmp_path: Path) -> None:
    teacher = build_model(get_config("tiny"), seed=5).eval()
    path = save_checkpoint(teacher, tmp_path / "teacher.safetensors")
    train_rows = load_reviews()["train"].subset(np.arange(40))
    targets = distill.load_teacher_targets(str(path), train_rows, train_rows, 48, 2, 0, torch.device("cpu"),
                                           log=lambda m: None)
    rows = np.array([3, 17, 29])
    inputs, _ = train_rows.batch(rows, 48, teacher.config.vocab_size)
    features = []
    handle = teacher.head.register_forward_hook(lambda m, a, out: features.append(a[0]))
    with torch.no_grad():
        logits = teacher(**inputs)
    handle.remove()
    got_logits, got_features = targets.batch(rows, torch.device("cpu"))
    assert torch.allclose(got_logits, logits, atol=1e-5) and torch.allclose(got_features, features[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["kl", "mse", "features", "kl+features"])
def test_training_with_the_tfidf_teacher_in_each_mode(tmp_path: Path, mode: str) -> None:
    result = train(TINY.replace(train_rows=64, max_steps=2, teacher="tfidf", distill_mode=mode), tmp_path)
    assert result.steps == 2 and result.metrics["teacher"]["kind"] == "tfidf"
    records = steps_of(tmp_path)
    assert all(r["distill"] > 0 for r in records), "the distillation term is part of every step's loss"


def test_bad_distill_mode_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["--config", "tiny", "--teacher", "tfidf", "--distill-mode", "kl+cosine",
                                            "--out", str(tmp_path)])
    assert result.exit_code == 1 and "distill_mode must be one of kl, mse, features" in result.output


# --- gradient norms, clipping, curves ----------------------------------------------------------------------------

def test_gradient_norms_per_block_and_global(generator: torch.Generator) -> None:
    assert [block_name(n) for n in ("blocks.1.moe.w1", "embedding.text.weight", "head.bias", "final_norm.weight")] \
        == ["blocks.1", "embedding", "head", "final_norm"]
    model = build_model(get_config("tiny"), seed=0)
    blocks = parameter_blocks(model)
    assert list(blocks)[:3] == ["embedding", "fabric", "blocks.0"] and list(blocks)[-1] == "head"
    inputs, labels = load_reviews()["train"].batch(np.arange(6), 32, model.config.vocab_size)
    F.cross_entropy(model(**inputs), labels).backward()
    total, per_block = gradient_norms(blocks)
    reference = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert total == pytest.approx(float(reference), rel=1e-5)
    assert per_block["head"] == pytest.approx(float(torch.cat([model.head.weight.grad.flatten(),
                                                               model.head.bias.grad]).norm()), rel=1e-5)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_norms_are_logged_and_summarised_with_or_without_clipping(tmp_path: Path, clip: float) -> None:
    result = train(TINY.replace(max_steps=4, grad_clip=clip, eval_every=2), tmp_path)
    records = steps_of(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    summary = result.metrics["grad_norms"]["finetune"]
    assert summary["steps"] == 4 and summary["clipped_steps"] == (4 if clip else 0)
    assert summary["global"]["max"] == max(r["grad_norm"] for r in records) > 1e-3
    assert set(summary["per_block"]) == set(records[0]["block_norms"]) >= {"embedding", "blocks.0", "head"}
    assert [v["step"] for v in result.metrics["validations"]] == [2, 4]
    png = tmp_path / result.metrics["curves"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_resumed_run_keeps_one_step_log(tmp_path: Path) -> None:
    config = TINY.replace(max_steps=6, epochs=2, eval_every=3)
    train(config, tmp_path / "whole")

    def stop_at_step_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", on_step=stop_at_step_5)
    resumed = train(config, tmp_path / "cut", resume=tmp_path / "cut" / "last.safetensors")
    whole, cut = steps_of(tmp_path / "whole"), steps_of(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in cut] == [r["loss"] for r in whole]
    assert [v["step"] for v in resumed.metrics["validations"]] == [3, 4, 6]  # step 4 ends epoch 1


# --- batches and the reproducible prefix -------------------------------------------------------------------------

def test_length_grouped_batches_cover_each_row_once_with_less_padding() -> None:
    lengths = np.random.default_rng(0).integers(2, 150, size=1000)
    plain = epoch_batches(1000, 32, 0, 0, 0, lambda: lengths)
    expected = np.random.default_rng([0, 0]).permutation(1000)  # consecutive slices of the seeded shuffle
    assert all(np.array_equal(b, expected[i * 32:(i + 1) * 32]) for i, b in enumerate(plain))
    grouped = epoch_batches(1000, 32, 0, 0, 10, lambda: lengths)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(1000))
    padded = {name: sum(len(b) * lengths[b].max() for b in batches) for name, batches in
              (("plain", plain), ("grouped", grouped))}
    assert padded["grouped"] < 0.7 * padded["plain"]
    assert all(np.array_equal(a, b) for a, b in zip(grouped, epoch_batches(1000, 32, 0, 0, 10, lambda: lengths)))
    assert not all(np.array_equal(a, b) for a, b in zip(grouped, epoch_batches(1000, 32, 0, 1, 10, lambda: lengths)))


def test_the_prefix_of_a_run_is_reproduced_by_stopping_early(tmp_path: Path) -> None:
    config = TINY.replace(train_rows=64, epochs=3, pretrain_epochs=1, length_groups=2)  # 8 + 24 steps
    whole = train(config, tmp_path / "whole")
    prefix = whole.metrics["prefix"]
    assert prefix["steps"] == PREFIX_STEPS and prefix["phase"] == "pretrain" and len(prefix["losses"]) == PREFIX_STEPS
    assert prefix["losses"] == [r["loss"] for r in steps_of(tmp_path / "whole")[:PREFIX_STEPS]]
    assert read_checkpoint_metadata(tmp_path / "whole" / "best.safetensors")["prefix"] == json.dumps(prefix)
    stopped = train(config, tmp_path / "stopped", stop_after=PREFIX_STEPS)
    assert set(stopped.metrics) == {"command", "prefix"}
    assert compare_prefix(prefix, stopped.metrics["prefix"]) == []
    moved = {**prefix, "losses": [*prefix["losses"][:3], prefix["losses"][3] + 1e-7, *prefix["losses"][4:]]}
    assert compare_prefix(prefix, moved) == [f"loss at step 4: shipped {prefix['losses'][3]!r}, "
                                             f"re-run {moved['losses'][3]!r}"]
    assert "weights after 16 steps" in compare_prefix(prefix, {**prefix, "weights_sha256": "0" * 64})[0]
