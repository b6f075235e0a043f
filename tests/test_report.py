"""`tbps report` on run folders the test writes: grouping by seed and by --by keys, mean ±
sample std computed by hand, unfinished runs listed apart, the files and the plot, and the
bad inputs."""

import json
import math
import statistics

import pytest
import yaml

from tbps.cli import main


def _run(root, name, experiment, seed, noise, metrics=None, machines=None):
    folder = root / experiment / name
    folder.mkdir(parents=True)
    config = {"experiment": experiment, "seed": seed, "run_dir": None, "runs_dir": str(root),
              "data": {"noise_rate": noise, "seed": seed, "batch_size": 64},
              "optim": {"lr": 1e-3}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if machines is not None:  # as tbps.machine.record_start writes it, one entry per start
        (folder / "machine.json").write_text(json.dumps(
            [{"label": m, "processor": m.split(",")[0]} for m in machines]))
    (folder / "wandb" / "offline-run-x" / "files").mkdir(parents=True)  # W&B's own config
    (folder / "wandb" / "offline-run-x" / "files" / "config.yaml").write_text("a: 1\n")
    return folder


def _metrics(r1, map_, seconds=100.0):
    return {"test/R1": r1, "test/R5": r1 + 40, "test/R10": r1 + 50, "test/mAP": map_,
            "test/mINP": map_ - 10, "test/rSum": 3 * r1 + 90, "val/R1": r1 + 2,
            "val/epoch": 9, "train/seconds": seconds, "train/samples_per_s": 120.0}


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, r1, m in [(0, 30.0, 35.0), (1, 32.0, 36.0), (2, 34.0, 40.0)]:
        _run(root, f"clean{seed}", "synthetic", seed, 0.0, _metrics(r1, m))
    for seed, r1 in [(0, 25.0), (1, 27.0)]:
        _run(root, f"noisy{seed}", "synthetic", seed, 0.3, _metrics(r1, 30.0))
    _run(root, "c0", "crue_synthetic", 0, 0.3, _metrics(28.0, 31.0, seconds=80.0))
    _run(root, "unfinished", "synthetic", 3, 0.0)  # no metrics.json
    return root


def _std(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_groups_by_seed_with_mean_and_sample_std(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    groups = {(g["experiment"], g["seeds"]): g for g in data["groups"]}
    clean = groups[("synthetic", 3)]  # the three clean seeds, not the noisy ones
    assert clean["seed_list"] == [0, 1, 2]
    assert clean["test/R1 mean"] == pytest.approx(32.0)
    assert clean["test/R1 std"] == pytest.approx(_std([30.0, 32.0, 34.0]))  # 2.0
    assert clean["test/mAP mean"] == pytest.approx(37.0)
    assert clean["test/mAP std"] == pytest.approx(_std([35.0, 36.0, 40.0]))
    assert clean["val_metric"] == "val/R1" and clean["val mean"] == pytest.approx(34.0)
    noisy = groups[("synthetic", 2)]
    assert noisy["test/R1 mean"] == pytest.approx(26.0)
    crue = groups[("crue_synthetic", 1)]
    assert crue["test/R1 std"] is None and crue["train/seconds mean"] == 80.0
    assert data["unfinished"] == [str(runs / "synthetic" / "unfinished")]
    for name in ("report.md", "report.csv", "report.json"):
        assert (out / name).is_file()
    md = (out / "report.md").read_text()
    assert "32.00 ± 2.00" in md and "unfinished (no metrics.json" in md


def test_by_key_groups_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--by", "data.noise_rate", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    main_table = text.split("\n\n")[0]  # the share-kept table follows
    lines = [line for line in main_table.splitlines() if line.startswith("| synthetic")]
    assert [line.split(" | ")[1] for line in lines] == ["0.0", "0.3"]
    assert "| crue_synthetic | 0.3 | 1 | 28.00 |" in text
    from PIL import Image

    assert Image.open(out / "report.png").size[0] > 300
    rows = list(__import__("csv").DictReader((out / "report.csv").open()))
    assert {r["data.noise_rate"] for r in rows} == {"0.0", "0.3"}


def test_the_last_epochs_r1_gets_a_column_when_runs_report_it(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert "R1 (last epoch)" not in capsys.readouterr().out  # no run has it
    for seed, last in ((0, 29.0), (1, 33.0), (2, 37.0)):
        path = runs / "synthetic" / f"clean{seed}" / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "test_last/R1": last}))
    assert main(["report", str(runs), "--out", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    clean = next(g for g in data["groups"] if g["seeds"] == 3)
    assert clean["test_last/R1 mean"] == pytest.approx(33.0)
    assert clean["test_last/R1 std"] == pytest.approx(_std([29.0, 33.0, 37.0]))
    md = (out / "report.md").read_text()
    assert "R1 (last epoch)" in md and "| 33.00 ± 4.00 |" in md
    # a run recorded before eval.test_last: the column says how many runs it averages
    path = runs / "synthetic" / "clean2" / "metrics.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                if k != "test_last/R1"}))
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert "| 31.00 ± 2.83 (2 of 3) |" in (out / "report.md").read_text()


def test_bad_inputs_are_clear_errors(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [([str(tmp_path / "nowhere")], "is not a folder"),
             ([str(tmp_path / "empty")], "holds no run folder"),
             ([str(runs), "--by", "data.noise"], "no run has that setting; close ones: "
                                                 "data.noise_rate")]
    for argv, message in cases:
        assert main(["report", *argv, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    only_unfinished = tmp_path / "u"
    _run(only_unfinished, "x", "synthetic", 0, 0.0)
    assert main(["report", str(only_unfinished), "--out", str(tmp_path / "o")]) == 2
    assert "none of the 1 runs found has finished" in capsys.readouterr().err


def test_the_machine_column_and_a_note_when_machines_differ(tmp_path, capsys):
    """Each row names the machines its runs trained on, with counts where they differ, and
    the table warns when its runs come from more than one; runs from before machine.json
    read as unrecorded."""
    root = tmp_path / "runs"
    amd, xeon = "AMD EPYC, 1 thread", "Intel Xeon, 1 thread"
    for seed, machine in [(0, amd), (1, xeon), (2, amd)]:
        _run(root, f"c{seed}", "synthetic", seed, 0.0, _metrics(30.0 + seed, 35.0), [machine])
    _run(root, "n0", "synthetic", 0, 0.3, _metrics(25.0, 30.0), [amd, xeon])  # resumed elsewhere
    _run(root, "old", "crue_synthetic", 0, 0.3, _metrics(28.0, 31.0))
    out = tmp_path / "report"
    assert main(["report", str(root), "--by", "data.noise_rate", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| ") + " " + line.split(" | ")[1]: line
            for line in md.split("\n\n")[0].splitlines()
            if line.startswith("| ") and "experiment" not in line}
    assert rows["synthetic 0.0"].endswith(f"| {amd} (2) + {xeon} (1) |")
    assert rows["synthetic 0.3"].endswith(f"| {amd} → {xeon} |")
    assert rows["crue_synthetic 0.3"].endswith("| unrecorded |")
    assert f"machines differ: {amd}; {xeon}; 1 run unrecorded." in md
    data = json.loads((out / "report.json").read_text())
    assert data["machines_note"].startswith("machines differ")

    one = tmp_path / "one"  # a table from one machine has no note
    for seed in (0, 1):
        _run(one, f"c{seed}", "synthetic", seed, 0.0, _metrics(30.0, 35.0), [amd])
    assert main(["report", str(one), "--out", str(tmp_path / "r1")]) == 0
    assert "machines differ" not in (tmp_path / "r1" / "report.md").read_text()
    assert json.loads((tmp_path / "r1" / "report.json").read_text())["machines_note"] is None
    capsys.readouterr()

    (one / "synthetic" / "c0" / "machine.json").write_text("{not json")
    assert main(["report", str(one), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert str(one / "synthetic" / "c0" / "machine.json") in err and "delete it" in err


def test_noise_rate_gives_the_share_kept_with_its_standard_error(runs, tmp_path, capsys):
    # clean seeds 30/32/34, noisy seeds 25/27 (tbps study's layout); crue has no clean row
    out = tmp_path / "report"
    assert main(["report", str(runs), "--by", "data.noise_rate", "--out", str(out),
                 "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)["robustness"]
    assert [t["experiment"] for t in table] == ["synthetic"]
    t = table[0]
    clean, noisy = [30.0, 32.0, 34.0], [25.0, 27.0]
    kept = 100 * statistics.mean(noisy) / statistics.mean(clean)
    # the standard error of a ratio of two independent means, first order
    se = kept * math.sqrt(statistics.variance(noisy) / len(noisy) / statistics.mean(noisy) ** 2
                          + statistics.variance(clean) / len(clean) / statistics.mean(clean) ** 2)
    assert t["kept mean"] == pytest.approx(kept) and t["kept std"] == pytest.approx(se)
    assert t["lost"] == pytest.approx(32.0 - 26.0)
    assert (t["clean_seeds"], t["seeds"]) == (3, 2) and t["kept_last mean"] is None  # no last-epoch figures here
    md = (out / "report.md").read_text()
    assert "| synthetic | 0.3 | 3, 2 | 32.00 ± 2.00 | 26.00 ± 1.41 | 81.2 ± 4.3 | 6.00 | – |" in md


def test_the_share_kept_by_the_last_epochs_model_needs_it_on_every_seed(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, r1 in [(0, 30.0), (1, 34.0)]:
        _run(root, f"c{seed}", "synthetic", seed, 0.0, {**_metrics(r1, 35.0), "test_last/R1": r1 + 1})
    for seed, r1 in [(0, 24.0), (1, 26.0)]:
        _run(root, f"n{seed}", "synthetic", seed, 0.3, {**_metrics(r1, 30.0), "test_last/R1": r1 + 2})
    assert main(["report", str(root), "--by", "data.noise_rate", "--out", str(tmp_path / "r"),
                 "--format", "json"]) == 0
    t = json.loads(capsys.readouterr().out)["robustness"][0]
    assert t["kept_last mean"] == pytest.approx(100 * 27.0 / 33.0)
    (root / "synthetic" / "n1" / "metrics.json").write_text(json.dumps(_metrics(26.0, 30.0)))
    assert main(["report", str(root), "--by", "data.noise_rate", "--out", str(tmp_path / "r"),
                 "--format", "json"]) == 0  # one noisy seed without it: no last-epoch share
    assert json.loads(capsys.readouterr().out)["robustness"][0]["kept_last mean"] is None


def test_without_noise_rate_there_is_no_kept_table(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "r"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["robustness"] == []
