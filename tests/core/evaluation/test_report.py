"""Summary tables (markdown, side by side), results.json and plots."""

import json

import numpy as np
from domainfm.evaluation.report import (
    comparison_table,
    format_value,
    markdown_table,
    plot_confusion,
    plot_embedding,
    plot_roc,
    render_summary,
    write_results,
)
from domainfm.evaluation.results import ProtocolResult
from PIL import Image


def _result(name, seed, classes=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y]
    return ProtocolResult.from_predictions(name, list(classes), y, p / p.sum(1, keepdims=True), n_boot=50)


def test_tables_are_aligned_markdown():
    table = markdown_table(["a", "long header"], [["1", "x"], ["22", "yy"]]).splitlines()
    assert (
        table[0] == "| a  | long header |" and table[1] == "|----|-------------|" and table[3] == "| 22 | yy          |"
    )
    assert format_value(0.81234, [0.7, 0.9]) == "0.812 [0.700, 0.900]" and format_value(None) == "-"


def test_side_by_side_table_and_results_json(tmp_path):
    results = {
        "runA": [_result("knn", 0), _result("logreg", 1)],
        "runB": [
            _result("knn", 2),
            ProtocolResult("fewshot 1-shot", ["a"], episodes={"balanced_accuracy": [0.5, 0.1]}),
        ],
    }
    side = comparison_table(results).splitlines()
    assert side[0].split("|")[1:-1] == [
        " protocol       ",
        " runA bal. acc        ",
        " runA AUROC           ",
        " runB bal. acc        ",
        " runB AUROC           ",
    ]
    knn_b = results["runB"][0].scores["metrics"]["balanced_accuracy"]
    assert side[2].startswith("| knn ") and f"{knn_b:.3f} [" in side[2]
    assert "| logreg " in side[3] and side[3].rstrip(" |").endswith("-")  # runB has no logreg
    assert "0.500 ± 0.100" in side[4]
    summary = render_summary(results, "title", ["a note"])
    assert summary.startswith("# title\n\na note\n") and "## Side by side" in summary and "## runB" in summary
    json_path, md_path = write_results(tmp_path, results, {"data": "x"}, summary)
    payload = json.loads(json_path.read_text())
    assert payload["data"] == "x" and md_path.read_text() == summary
    knn = payload["results"]["runA"][0]
    assert knn["protocol"] == "knn" and set(knn["metrics"]) == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "auroc",
        "qwk",
    }
    assert len(knn["ci"]["auroc"]) == 2 and np.array(knn["confusion_matrix"]).sum() == 60


def test_plots_are_written(tmp_path):
    r = _result("knn", 0)
    paths = [
        plot_confusion(r.scores["confusion_matrix"], r.classes, tmp_path / "cm.png", "cm"),
        plot_roc(r.y_true, r.probs, r.classes, tmp_path / "roc.png", "roc"),
        plot_embedding(r.probs, r.y_true, r.classes, tmp_path / "emb.png", "emb", method="tsne", max_points=40),
    ]
    for path in paths:
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 300
