"""Sizes of the synthetic datasets: "tiny" for tests, "demo" for `make demo`, "large"."""

from __future__ import annotations

from dataclasses import dataclass

BP4D_TASKS = tuple(f"T{i}" for i in range(1, 9))
BP4DPLUS_CODED_TASKS = ("T1", "T6", "T7", "T8")  # the only AU-coded tasks of BP4D+


@dataclass(frozen=True)
class Preset:
    """How much of each dataset to synthesize. Image sizes are (height, width) in pixels."""

    name: str
    image_size: tuple[int, int]
    # BP4D: subjects per fold x tasks x AU-coded frames per task
    bp4d_per_fold: int
    bp4d_tasks: tuple[str, ...]
    bp4d_frames: int
    # BP4D+: tasks with images; only those in BP4DPLUS_CODED_TASKS get label files
    bp4dplus_per_fold: int
    bp4dplus_tasks: tuple[str, ...]
    bp4dplus_frames: int
    # DISFA: subjects per fold x video frames
    disfa_per_fold: int
    disfa_frames: int
    # FEC: identities, images per identity, triplets per CSV
    fec_identities: int
    fec_images_per_identity: int
    fec_train_triplets: int
    fec_test_triplets: int
    fec_image_size: tuple[int, int]
    # BP4D / BP4D+ label files: fraction of rows all 9 (not coded) and of single 9 cells
    uncoded_rows: float = 0.03
    uncoded_cells: float = 0.01

    def __post_init__(self) -> None:
        for field_name in (
            "bp4d_per_fold",
            "bp4d_frames",
            "bp4dplus_per_fold",
            "bp4dplus_frames",
            "disfa_per_fold",
            "disfa_frames",
            "fec_identities",
            "fec_images_per_identity",
        ):
            if getattr(self, field_name) < 1:
                raise ValueError(f"preset {self.name}: {field_name} must be >= 1")
        bad = [t for t in self.bp4d_tasks + self.bp4dplus_tasks if t not in BP4D_TASKS]
        if bad:
            raise ValueError(f"preset {self.name}: unknown tasks {bad}; tasks are T1..T8")


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        image_size=(128, 128),
        bp4d_per_fold=2,
        bp4d_tasks=("T1", "T6"),
        bp4d_frames=6,
        bp4dplus_per_fold=1,
        bp4dplus_tasks=("T1", "T2", "T8"),
        bp4dplus_frames=4,
        disfa_per_fold=1,
        disfa_frames=20,
        fec_identities=30,
        fec_images_per_identity=2,
        fec_train_triplets=32,
        fec_test_triplets=8,
        fec_image_size=(128, 128),
    ),
    "demo": Preset(
        name="demo",
        image_size=(256, 256),
        bp4d_per_fold=4,
        bp4d_tasks=("T1", "T2", "T6", "T8"),
        bp4d_frames=32,
        bp4dplus_per_fold=2,
        bp4dplus_tasks=("T1", "T2", "T6", "T7", "T8"),
        bp4dplus_frames=16,
        disfa_per_fold=2,
        disfa_frames=64,
        fec_identities=300,
        fec_images_per_identity=2,
        fec_train_triplets=1200,
        fec_test_triplets=300,
        fec_image_size=(256, 256),
    ),
    "large": Preset(
        name="large",
        image_size=(256, 256),
        bp4d_per_fold=14,
        bp4d_tasks=BP4D_TASKS,
        bp4d_frames=120,
        bp4dplus_per_fold=10,
        bp4dplus_tasks=BP4D_TASKS,
        bp4dplus_frames=80,
        disfa_per_fold=9,
        disfa_frames=600,
        fec_identities=3000,
        fec_images_per_identity=4,
        fec_train_triplets=40000,
        fec_test_triplets=8000,
        fec_image_size=(320, 320),
    ),
}


def get_preset(name: str | Preset) -> Preset:
    """A preset by name (tiny, demo, large); a Preset passes through unchanged."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown synthetic preset {name!r}: choose one of {', '.join(PRESETS)}"
        ) from None
