"""validate_inputs: each bad input is refused with a message naming the tensor and the expectation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mahia.model import InputValidationError, as_tensors, get_config, random_inputs, validate_inputs
from mahia.model.config import FIRST_WORD_ID
from mahia.model.inputs import input_spec

TINY = get_config("tiny")


@pytest.fixture
def good(generator: torch.Generator) -> dict[str, torch.Tensor]:
    inputs = random_inputs(TINY, 3, 12, generator)
    validate_inputs(TINY, inputs)
    return inputs


def with_change(inputs: dict[str, torch.Tensor], name: str, value: object) -> dict[str, object]:
    changed = dict(inputs)
    changed[name] = value
    return changed


def bad_cases(good: dict[str, torch.Tensor]) -> list[tuple[dict, str]]:
    """Bad batches (from a good one of batch 3, length 12) and the whole message each must raise."""
    ids, mask = good["input_ids"], good["attention_mask"]
    holes = mask.clone()
    holes[0, 0], holes[0, 5] = 0, 1
    nan_numeric = good["numeric"].clone()
    nan_numeric[1, 1] = float("nan")
    inf_numeric = good["numeric"].clone()
    inf_numeric[2, 0] = float("inf")
    bad_code = good["categorical"].clone()
    bad_code[0, 2] = TINY.categorical_cardinalities[2]
    too_long = torch.ones(3, TINY.max_seq_len + 1, dtype=torch.long)
    empty = {k: v[:0] for k, v in good.items()}
    no_tokens = {**good, "input_ids": ids[:, :0], "attention_mask": mask[:, :0]}
    ids_range = f"[{int(ids.min()) - 300}, {int(ids.max()) - 300}]"
    names = "inputs must be exactly input_ids, attention_mask, numeric, categorical"
    return [
        (with_change(good, "input_ids", ids.to(torch.int32)),
         "input 'input_ids': got dtype torch.int32, expected torch.int64"),
        (with_change(good, "attention_mask", mask.float()),
         "input 'attention_mask': got dtype torch.float32, expected torch.bool, torch.int64 or torch.int32"),
        (with_change(good, "numeric", good["numeric"].long()),
         "input 'numeric': got dtype torch.int64, expected a floating dtype"),
        (with_change(good, "categorical", good["categorical"].float()),
         "input 'categorical': got dtype torch.float32, expected torch.int64"),
        (with_change(good, "input_ids", ids[0]), "input 'input_ids': got rank 1 shape (12,), expected rank 2"),
        (with_change(good, "numeric", good["numeric"][:2]),
         "input 'numeric': got shape (2, 2), expected [3, 2] (batch, numeric features)"),
        (with_change(good, "attention_mask", mask[:, :5]),
         "input 'attention_mask': got shape (3, 5), expected the shape of input_ids (3, 12)"),
        (with_change(good, "categorical", good["categorical"][:, :2]),
         "input 'categorical': got shape (3, 2), expected [3, 3] (batch, categorical features)"),
        (with_change(good, "input_ids", ids + TINY.vocab_size),
         f"input 'input_ids': got ids in [{int(ids.min()) + 512}, {int(ids.max()) + 512}], expected ids in [0, 511]"),
        (with_change(good, "input_ids", ids - 300),
         f"input 'input_ids': got ids in {ids_range}, expected ids in [0, 511]"),
        (with_change(good, "categorical", bad_code),
         f"input 'categorical': got codes in [{int(bad_code[:, 2].min())}, 21] for feature 2, "
         "expected codes in [0, 20] (0 = unknown)"),
        (with_change(good, "numeric", nan_numeric),
         "input 'numeric': got a non-finite value (nan) at sample 1, feature 1, expected finite values"),
        (with_change(good, "numeric", inf_numeric),
         "input 'numeric': got a non-finite value (inf) at sample 2, feature 0, expected finite values"),
        (with_change(with_change(good, "input_ids", too_long), "attention_mask", too_long),
         "input 'input_ids': got sequence length 161, expected at most max_seq_len=160 of config 'tiny'"),
        (empty, "input 'input_ids': got an empty batch (batch size 0), expected at least one sample"),
        (no_tokens, "input 'input_ids': got sequence length 0, expected at least one token"),
        (with_change(good, "attention_mask", holes),
         "input 'attention_mask': got a 0 before a 1 in sample 0, expected right padding (all 1s, then all 0s)"),
        (with_change(good, "attention_mask", mask * 2),
         "input 'attention_mask': got values other than 0 and 1, expected 0 (padding) or 1 (token)"),
        ({k: v for k, v in good.items() if k != "numeric"}, f"{names}; missing: ['numeric'], unexpected: none"),
        (with_change(good, "token_type_ids", ids), f"{names}; missing: none, unexpected: ['token_type_ids']"),
        (with_change(good, "numeric", [[1.0, 2.0]]), "input 'numeric': got list, expected a torch.Tensor"),
    ]


def test_every_bad_input_is_refused_naming_the_tensor_what_it_got_and_what_was_expected(
        good: dict[str, torch.Tensor]) -> None:
    for inputs, message in bad_cases(good):
        with pytest.raises(InputValidationError) as refused:
            validate_inputs(TINY, inputs)
            pytest.fail(f"accepted; expected: {message}")
        assert str(refused.value) == message


def test_bool_mask_and_text_only_rules(good: dict[str, torch.Tensor]) -> None:
    validate_inputs(TINY, with_change(good, "attention_mask", good["attention_mask"].bool()))
    text_only = TINY.replace(num_numeric=0, categorical_cardinalities=())
    inputs = {"input_ids": good["input_ids"], "attention_mask": good["attention_mask"].clone(),
              "numeric": torch.zeros(3, 0), "categorical": torch.zeros(3, 0, dtype=torch.long)}
    validate_inputs(text_only, inputs)
    inputs["attention_mask"][1] = 0
    with pytest.raises(InputValidationError, match="no real token in sample 1"):
        validate_inputs(text_only, inputs)


def test_ids_up_to_vocab_size_minus_one_pass_and_vocab_size_is_refused(good: dict[str, torch.Tensor]) -> None:
    ids = good["input_ids"].clone()
    ids[1, 0] = TINY.vocab_size - 1  # the last id of the table
    validate_inputs(TINY, with_change(good, "input_ids", ids))
    ids[1, 0] = TINY.vocab_size  # one past it: an embedding lookup out of range
    with pytest.raises(InputValidationError, match=r"'input_ids'.*ids in \[\d+, 512\].*ids in \[0, 511\]"):
        validate_inputs(TINY, with_change(good, "input_ids", ids))


def test_arrays_become_tensors_and_non_numeric_ones_are_refused_by_name(good: dict[str, torch.Tensor]) -> None:
    arrays = {name: t.numpy() for name, t in good.items()}
    arrays["numeric"] = arrays["numeric"].astype(">f4")  # big-endian: converted, not refused
    tensors = as_tensors({**arrays, "categorical": good["categorical"],
                          "attention_mask": good["attention_mask"].tolist()})
    validate_inputs(TINY, tensors)
    assert tensors["categorical"] is good["categorical"] and tensors["numeric"].dtype == torch.float32
    assert torch.equal(tensors["attention_mask"], good["attention_mask"])
    refused = ((np.array(["1", "0"]), "an array of dtype <U1"),
               (np.array([1, None], dtype=object), "an array of dtype object"),
               (np.array(["2026-01-01"], dtype="datetime64[D]"), "an array of dtype datetime64"),
               ([[1, 2], [3]], "a list that does not form an array"))
    for value, given in refused:
        with pytest.raises(InputValidationError, match=f"input 'numeric': got {given}.*expected a numeric array"):
            as_tensors({**arrays, "numeric": value})


def test_the_boundaries_of_length_and_padding(generator: torch.Generator) -> None:
    for length in (1, TINY.max_seq_len):  # the shortest and the longest accepted sequence
        validate_inputs(TINY, random_inputs(TINY, 3, length, generator))
    inputs = random_inputs(TINY, 3, 2, generator, full=True)
    inputs["attention_mask"][2] = torch.tensor([0, 1])  # left padding in the shortest sequence that can have it
    with pytest.raises(InputValidationError, match="a 0 before a 1 in sample 2"):
        validate_inputs(TINY, inputs)
    inputs = random_inputs(TINY, 3, 6, generator, full=True)
    inputs["attention_mask"][1] = torch.tensor([1, 0, 1, 1, 0, 0])  # a hole after the first token
    with pytest.raises(InputValidationError, match="a 0 before a 1 in sample 1"):
        validate_inputs(TINY, inputs)


def test_a_text_only_sample_of_one_token_passes_and_one_of_none_is_named(generator: torch.Generator) -> None:
    text_only = TINY.replace(num_numeric=0, categorical_cardinalities=())
    inputs = random_inputs(text_only, 4, 5, generator, full=True)
    inputs["attention_mask"][0, 1:] = 0  # one real token
    validate_inputs(text_only, inputs)
    inputs["attention_mask"][2] = 0
    with pytest.raises(InputValidationError) as refused:
        validate_inputs(text_only, inputs)
    assert str(refused.value) == ("input 'attention_mask': got no real token in sample 2, "
                                  "expected at least one token per sample in a text-only model")


def test_a_mixed_batch_of_tensors_and_arrays_converts_every_array_without_copying(
        good: dict[str, torch.Tensor]) -> None:
    mixed = {"input_ids": good["input_ids"], **{n: good[n].numpy() for n in ("attention_mask", "numeric")},
             "categorical": good["categorical"].tolist()}
    tensors = as_tensors(mixed)
    assert list(tensors) == list(mixed)
    assert tensors["input_ids"] is good["input_ids"]
    for name in ("attention_mask", "numeric", "categorical"):
        assert isinstance(tensors[name], torch.Tensor) and torch.equal(tensors[name], good[name]), name
    # an array already in native byte order is wrapped, not copied (a served batch is not duplicated)
    assert np.shares_memory(tensors["numeric"].numpy(), mixed["numeric"])
    validate_inputs(TINY, tensors)


def test_input_spec_is_the_manifest_contract_random_inputs_follow(generator: torch.Generator) -> None:
    spec = input_spec(TINY)
    assert spec == {"input_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
                    "attention_mask": {"dtype": "int64", "shape": ["batch", "seq"]},
                    "numeric": {"dtype": "float32", "shape": ["batch", 2]},
                    "categorical": {"dtype": "int64", "shape": ["batch", 3]}}
    inputs = random_inputs(TINY, 3, 37, generator)
    assert list(inputs) == list(spec)
    for name, tensor in inputs.items():
        assert str(tensor.dtype) == f"torch.{spec[name]['dtype']}", name
        assert tuple(tensor.shape) == tuple({"batch": 3, "seq": 37}.get(d, d) for d in spec[name]["shape"]), name


def test_random_inputs_are_valid_seeded_and_cover_every_length_id_range_and_code() -> None:
    batch, length = 3000, 3
    inputs = random_inputs(TINY, batch, length, torch.Generator().manual_seed(1))
    validate_inputs(TINY, inputs)
    again = random_inputs(TINY, batch, length, torch.Generator().manual_seed(1))
    assert all(torch.equal(inputs[n], again[n]) for n in inputs), "not reproducible from the generator alone"
    ids, mask, numeric, categorical = inputs.values()
    assert mask.dtype == torch.int64 and bool(mask[0].all()), "the first sample fills the batch"
    assert bool((ids[mask == 1] >= FIRST_WORD_ID).all()) and int(ids.max()) == TINY.vocab_size - 1
    assert bool((ids[mask == 0] == 0).all()), "padding positions hold id 0"
    # right padding of a length uniform on 1..length
    lengths = mask.sum(dim=1)
    share = torch.bincount(lengths, minlength=length + 1)[1:].double() / batch
    assert share.sub(1 / length).abs().max() < 0.03, share
    assert numeric.dtype == torch.float32 and abs(float(numeric.mean())) < 0.05 and abs(float(numeric.std()) - 1) < 0.05
    for j, cardinality in enumerate(TINY.categorical_cardinalities):
        assert set(categorical[:, j].tolist()) == set(range(cardinality)), f"feature {j}: codes 0..{cardinality - 1}"
    full = random_inputs(TINY, 5, 4, torch.Generator().manual_seed(2), full=True)
    assert bool(full["attention_mask"].all())


def test_random_inputs_of_a_text_only_model_and_of_batch_one(generator: torch.Generator) -> None:
    text_only = TINY.replace(num_numeric=0, categorical_cardinalities=())
    inputs = random_inputs(text_only, 3, 7, generator)
    validate_inputs(text_only, inputs)
    assert inputs["categorical"].dtype == torch.int64 and tuple(inputs["categorical"].shape) == (3, 0)
    assert tuple(inputs["numeric"].shape) == (3, 0)
    one = random_inputs(TINY, 1, 37, generator)
    validate_inputs(TINY, one)
    assert bool(one["attention_mask"].all())
