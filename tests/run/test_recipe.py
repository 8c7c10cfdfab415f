"""Every rope method has its rows: a title, a 0-step row and a `<method>_ft` row, planned like the others."""

from __future__ import annotations

from posinterp.model.rope import METHODS
from posinterp.run.recipe import (
    FINE_TUNED,
    METHOD_TITLES,
    ROW_TITLES,
    ROWS,
    fine_tune_dir,
    load_recipe,
    zero_shot_row,
)


def test_every_rope_method_has_a_title_and_its_rows():
    assert set(METHOD_TITLES) == set(METHODS)
    assert set(FINE_TUNED.values()) == set(METHODS)
    for method in METHODS:
        if method == "none":
            continue
        assert method in ROWS and f"{method}_ft" in ROWS and FINE_TUNED[f"{method}_ft"] == method
        assert zero_shot_row(f"{method}_ft") == method
    assert set(ROW_TITLES) == set(ROWS)
    assert fine_tune_dir("llama3_ft") == "llama3-ft"


def test_llama3_rows_plan_like_yarns(tiny_dir, tmp_path):
    """llama3 as the extend method: its rows use the extended checkpoint; as another row, --rope llama3:S."""
    from posinterp.run.stages import plan

    model = tiny_dir()
    rows = ["llama3", "llama3_ft", "yarn", "yarn_ft"]
    for method in ("llama3", "pi"):
        path = tmp_path / f"{method}.yaml"
        run_dir = tmp_path / f"run-{method}"
        path.write_text(f"name: tiny\nmodel: {model}\nout: {run_dir}\nextend:\n  factor: 3\n  method: {method}\n"
                        f"train:\n  steps: 3\n  seq_len: 128\n  data: gutenberg\n"
                        f"eval:\n  rows: [{', '.join(rows)}]\n  windows: [256, 768]\n  ppl:\n    stride: [128, 256]\n")
        recipe, _ = load_recipe(path)
        stages = {s.name: s.config for s in plan(recipe, run_dir)}
        extended = str(run_dir / "extended")
        train = stages["train (Llama 3 scaling)"]
        assert train.out == run_dir / "llama3-ft" and stages["ppl llama3_ft"].model == str(run_dir / "llama3-ft")
        if method == "llama3":
            assert stages["extend"].method == "llama3"
            assert (train.model, train.rope) == (extended, "none")
            assert (stages["ppl llama3"].model, stages["ppl llama3"].rope) == (extended, "none")
        else:
            assert (train.model, train.rope) == (str(model), "llama3:3")
            assert (stages["ppl llama3"].model, stages["ppl llama3"].rope) == (str(model), "llama3:3")
        assert stages["train (YaRN)"].rope == "yarn:3"
