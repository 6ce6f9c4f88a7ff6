"""validate_inputs: each bad input is refused with a message naming the tensor and the expectation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mahia.model import InputValidationError, as_tensors, get_config, random_inputs, validate_inputs

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


def bad_cases(good: dict[str, torch.Tensor]) -> list[tuple[str, dict, str]]:
    ids, mask = good["input_ids"], good["attention_mask"]
    holes = mask.clone()
    holes[0, 0], holes[0, 5] = 0, 1
    nan_numeric = good["numeric"].clone()
    nan_numeric[1, 1] = float("nan")
    inf_numeric = good["numeric"].clone()
    inf_numeric[2, 0] = float("inf")
    bad_code = good["categorical"].clone()
    bad_code[0, 2] = TINY.categorical_cardinalities[2]
    return [
        ("wrong dtype ids", with_change(good, "input_ids", ids.to(torch.int32)), r"'input_ids'.*torch.int32.*torch.int64"),
        ("wrong dtype mask", with_change(good, "attention_mask", mask.float()), r"'attention_mask'.*float32"),
        ("wrong dtype numeric", with_change(good, "numeric", good["numeric"].long()), r"'numeric'.*floating"),
        ("wrong dtype categorical", with_change(good, "categorical", good["categorical"].float()), r"'categorical'.*int64"),
        ("wrong rank", with_change(good, "input_ids", ids[0]), r"'input_ids'.*rank 1.*expected rank 2"),
        ("batch mismatch", with_change(good, "numeric", good["numeric"][:2]), r"'numeric'.*\(2, 2\).*\[3, 2\]"),
        ("mask shape", with_change(good, "attention_mask", mask[:, :5]), r"'attention_mask'.*shape"),
        ("feature count", with_change(good, "categorical", good["categorical"][:, :2]), r"'categorical'.*\[3, 3\]"),
        ("id too large", with_change(good, "input_ids", ids + TINY.vocab_size), r"'input_ids'.*ids in \[0, 511\]"),
        ("negative id", with_change(good, "input_ids", ids - 300), r"'input_ids'"),
        ("code outside table", with_change(good, "categorical", bad_code), r"'categorical'.*feature 2.*\[0, 20\]"),
        ("nan numeric", with_change(good, "numeric", nan_numeric), r"'numeric'.*nan.*sample 1, feature 1"),
        ("inf numeric", with_change(good, "numeric", inf_numeric), r"'numeric'.*inf"),
        ("too long", with_change(with_change(good, "input_ids", torch.ones(3, TINY.max_seq_len + 1, dtype=torch.long)),
                                 "attention_mask", torch.ones(3, TINY.max_seq_len + 1, dtype=torch.long)),
         r"'input_ids'.*sequence length 161.*max_seq_len=160"),
        ("empty batch", {k: v[:0] for k, v in good.items()}, r"'input_ids'.*empty batch"),
        ("left padding", with_change(good, "attention_mask", holes), r"'attention_mask'.*right padding"),
        ("mask values", with_change(good, "attention_mask", mask * 2), r"'attention_mask'.*0 and 1"),
        ("missing input", {k: v for k, v in good.items() if k != "numeric"}, r"missing: \['numeric'\]"),
        ("extra input", with_change(good, "token_type_ids", ids), r"unexpected: \['token_type_ids'\]"),
        ("not a tensor", with_change(good, "numeric", [[1.0, 2.0]]), r"'numeric'.*list.*torch.Tensor"),
    ]


def test_every_bad_input_is_refused_by_name(good: dict[str, torch.Tensor]) -> None:
    cases = bad_cases(good)
    for label, inputs, pattern in cases:
        with pytest.raises(InputValidationError, match=pattern):
            validate_inputs(TINY, inputs)
            pytest.fail(f"{label}: accepted")


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
