from pathlib import Path

import pytest

from glee.datasets.errors import DatasetError
from glee.datasets.splits import fold_subjects, load_split

# DESIGN.md, "Standard 3-fold subject splits": the source of truth, copied literally.
DESIGN_PARTS = {
    "bp4d": [
        "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008",
        "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005",
        "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014",
    ],
    "disfa": [
        "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016",
        "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024",
        "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004",
    ],
    "bp4dplus": [
        "F003 F004 F005 F006 F009 F017 F022 F028 F029 F031 F032 F033 F038 F044 F047 F048 F052 F053 F055 F061 F063 F067 F068 F074 F075 F076 F081 M003 M005 M006 M009 M012 M019 M025 M026 M028 M031 M036 M037 M040 M046 M047 M049 M051 M054 M056",
        "F001 F002 F008 F018 F021 F025 F026 F035 F036 F037 F039 F040 F041 F042 F046 F049 F057 F058 F060 F062 F064 F066 F070 F071 F072 F073 F077 F082 M001 M002 M007 M013 M014 M016 M022 M023 M024 M027 M029 M030 M034 M035 M041 M042 M043 M048 M055",
        "F007 F010 F011 F012 F013 F014 F015 F016 F019 F020 F023 F024 F027 F030 F034 F043 F045 F050 F051 F054 F056 F059 F065 F069 F078 F079 F080 M004 M008 M010 M011 M015 M017 M018 M020 M021 M032 M033 M038 M039 M044 M045 M050 M052 M053 M057 M058",
    ],
}


@pytest.mark.parametrize("name", sorted(DESIGN_PARTS))
def test_shipped_splits_equal_design_lists(name):
    split = load_split(name)
    for k, part in enumerate(DESIGN_PARTS[name], start=1):
        _, test = fold_subjects(split, k)
        assert sorted(part.split()) == test
    assert len(split) == sum(len(p.split()) for p in DESIGN_PARTS[name])


@pytest.mark.parametrize("name", sorted(DESIGN_PARTS))
def test_folds_are_subject_disjoint_and_cover(name):
    split = load_split(name)
    tests = [set(fold_subjects(split, k)[1]) for k in (1, 2, 3)]
    for k in (1, 2, 3):
        train, test = fold_subjects(split, k)
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(split)
    assert not (tests[0] & tests[1] or tests[0] & tests[2] or tests[1] & tests[2])


def test_sizes():
    assert [len(fold_subjects(load_split("bp4d"), k)[1]) for k in (1, 2, 3)] == [14, 14, 13]
    assert len(load_split("disfa")) == 27 and len(load_split("BP4DPLUS")) == 140


def test_user_split_whitespace_and_csv(tmp_path: Path):
    a = tmp_path / "mine.txt"
    a.write_text("# my split\nX1 1\nX2 2  # comment\n\nX3 3\n")
    assert load_split(str(a)) == {"X1": 1, "X2": 2, "X3": 3}
    b = tmp_path / "mine.csv"
    b.write_text("subject,fold\nX1,1\nX2, 3\n")
    assert load_split(b) == {"X1": 1, "X2": 3}
    train, test = fold_subjects(load_split(b), 3)
    assert train == ["X1"] and test == ["X2"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("X1 1\nX2 4\n", "line 2"),
        ("X1 1\nX2\n", "line 2"),
        ("X1 one\n", "line 1"),
        ("X1 1\nX1 2\n", "line 2"),
        ("# nothing\n", "no subjects"),
    ],
)
def test_malformed_split_names_the_line(tmp_path: Path, text, needle):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(DatasetError, match=needle):
        load_split(p)


def test_unknown_split_and_fold():
    with pytest.raises(DatasetError, match="neither a shipped split"):
        load_split("/no/such/split.txt")
    with pytest.raises(DatasetError, match="fold 4"):
        fold_subjects(load_split("disfa"), 4)
