import numpy as np
import pandas as pd
import pytest
import torch

from glee.evaluation.metrics import (
    F1Accumulator,
    au_f1,
    f1_table,
    fold_average,
    to_markdown,
    write_f1_table,
)

# Probabilities and labels for 3 AUs, 6 samples.
PROBS = np.array(
    [
        [0.9, 0.1, 0.9],
        [0.8, 0.2, 0.9],
        [0.7, 0.3, 0.1],
        [0.2, 0.4, 0.9],
        [0.1, 0.0, 0.1],
        [0.5, 0.5, 0.6],  # 0.5 is not "> 0.5": predicted absent
    ]
)
LABELS = np.array(
    [
        [1, 0, 1],
        [1, 0, -1],  # AU2 unknown: its positive prediction is not counted
        [0, 0, 1],
        [1, 0, -1],
        [0, 0, 0],
        [1, 0, 0],
    ]
)


def test_f1_hand_cases_including_au_without_positives():
    acc = F1Accumulator(3)
    acc.update(torch.as_tensor(PROBS), torch.as_tensor(LABELS), from_logits=False)
    # AU0: TP rows 0,1; FP row 2; FN rows 3,5 -> F1 = 4 / (4 + 1 + 2)
    # AU1: no positive label and no prediction -> F1 = 0 by convention
    # AU2: TP row 0; FN row 2; FP row 5; rows 1 and 3 masked -> F1 = 2 / 4
    assert acc.tp.tolist() == [2, 0, 1]
    assert acc.fp.tolist() == [1, 0, 1]
    assert acc.fn.tolist() == [2, 0, 1]
    assert acc.f1() == pytest.approx([4 / 7, 0.0, 0.5])
    assert acc.mean_f1() == pytest.approx((4 / 7 + 0.5) / 3)


def test_f1_from_logits_and_batched_accumulation_match():
    logits = np.log(PROBS.clip(1e-6, 1 - 1e-6) / (1 - PROBS.clip(1e-6, 1 - 1e-6)))
    logits[5] = [0.0, 0.0, 0.5]  # sigmoid(0) = 0.5 exactly: not predicted
    whole = au_f1(logits, LABELS)
    acc = F1Accumulator(3)
    for i in range(0, 6, 4):
        acc.update(logits[i : i + 4], LABELS[i : i + 4])
    assert acc.f1() == pytest.approx(whole)
    assert whole == pytest.approx([4 / 7, 0.0, 0.5])


def test_state_merge_round_trip_equals_single_pass():
    a, b, whole = F1Accumulator(3), F1Accumulator(3), F1Accumulator(3)
    a.update(PROBS[:3], LABELS[:3], from_logits=False)
    b.update(PROBS[3:], LABELS[3:], from_logits=False)
    whole.update(PROBS, LABELS, from_logits=False)
    state = a.state() + b.state()  # what an all-reduce sum gives
    assert state.shape == (3, 3) and state.dtype == torch.int64
    merged = F1Accumulator(3)
    merged.merge(state)
    assert torch.equal(merged.state(), whole.state())
    with pytest.raises(ValueError, match=r"state must be \(3, 3\)"):
        merged.merge(torch.zeros(3, 4))


def test_f1_au_with_false_positives_only_is_zero():
    acc = F1Accumulator(1)
    acc.update(np.array([[0.9], [0.9]]), np.array([[0], [0]]), from_logits=False)
    assert acc.f1().tolist() == [0.0] and acc.fp.tolist() == [2]


def test_update_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        F1Accumulator(3).update(np.zeros((2, 4)), np.zeros((2, 4)))


def test_fold_average():
    avg = fold_average([np.array([0.2, 0.4]), [0.4, 0.6], np.array([0.6, 0.8])])
    assert avg == pytest.approx([0.4, 0.6])
    with pytest.raises(ValueError, match="same"):
        fold_average([[0.1, 0.2], [0.1]])


def test_f1_table_format_and_markdown():
    df = f1_table(
        {"GLEE-Net": [0.5, 0.6543, 0.789], "w/o LB": [0.1, 0.2, 0.3]}, ["AU1", "AU2", "AU4"]
    )
    assert list(df.columns) == ["AU1", "AU2", "AU4", "Avg"]
    assert list(df.index) == ["GLEE-Net", "w/o LB"]
    assert df.loc["GLEE-Net"].tolist() == [50.0, 65.4, 78.9, 64.8]  # Avg of unrounded 64.78
    md = to_markdown(df)
    assert md.splitlines() == [
        "| Method | AU1 | AU2 | AU4 | Avg |",
        "|---|---:|---:|---:|---:|",
        "| GLEE-Net | 50.0 | 65.4 | 78.9 | 64.8 |",
        "| w/o LB | 10.0 | 20.0 | 30.0 | 20.0 |",
    ]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        f1_table({"x": [65.0, 1.0, 1.0]}, ["AU1", "AU2", "AU4"])
    with pytest.raises(ValueError, match="2 F1 values for 3 AUs"):
        f1_table({"x": [0.1, 0.2]}, ["AU1", "AU2", "AU4"])


def test_write_f1_table_csv_and_markdown(tmp_path):
    df = f1_table({"GLEE-Net": [0.5, 0.25]}, ["AU1", "AU2"])
    csv = write_f1_table(df, tmp_path / "t.csv")
    back = pd.read_csv(csv, index_col="Method")
    assert back.loc["GLEE-Net"].tolist() == [50.0, 25.0, 37.5]
    md = write_f1_table(df, tmp_path / "t.md")
    assert md.read_text() == to_markdown(df)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]  # no temp files
    with pytest.raises(ValueError, match=r"\.md or \.csv"):
        write_f1_table(df, tmp_path / "t.txt")
