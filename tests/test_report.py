"""mlr-jax report: per-game rows with intervals over seeds, aggregates with stratified-bootstrap
intervals, probability of improvement, curves, uneven seeds and mixed protocols, the files."""
import csv
import json

import numpy as np
import pytest

from mlr_jax import cli, evaluation, report, stats

PROTOCOL = {"episodes": 100, "episode_end": "game over", "noop_max": 30, "epsilon": 0.001}


def record(name, aux, seed, mean, domain="atari", budget="100k", evals=(), protocol=PROTOCOL):
    return {"domain": domain, "name": name, "budget": budget, "aux": aux, "seed": seed,
            "mean": mean, "n": 1, "scores": [mean], "run_dir": f"runs/{name}_{aux}_{seed}",
            "evals": list(evals), "protocol": dict(protocol)}


def hn(game, score):
    return evaluation.human_normalized(game, score)


ATARI = ([record("pong", "mlr", s, m, evals=[(50, m - 5), (100, m)]) for s, m in ((1, 4.0), (2, 6.0))]
         + [record("boxing", "mlr", s, m, evals=[(50, m / 2), (100, m)]) for s, m in ((1, 12.1), (2, 6.0))]
         + [record("pong", "none", s, m) for s, m in ((1, -3.0), (2, -10.0))]
         + [record("boxing", "none", s, m) for s, m in ((1, 2.0), (2, 4.0))])


def test_rows_aggregates_and_improvement_against_independent_numbers():
    rep = report.build_report(ATARI, reps=500)
    pong = next(r for r in rep["rows"] if (r["name"], r["aux"]) == ("pong", "mlr"))
    assert (pong["seeds"], pong["mean"], pong["paper"]) == (2, 5.0, 4.9)
    assert 4.0 <= pong["low"] <= 5.0 <= pong["high"] <= 6.0  # a bootstrap over the 2 seeds
    mlr = next(a for a in rep["aggregates"] if a["aux"] == "mlr")
    x = np.array([[hn("boxing", 12.1), hn("pong", 4.0)], [hn("boxing", 6.0), hn("pong", 6.0)]])
    assert (mlr["tasks"], mlr["seeds"]) == (["boxing", "pong"], [1, 2])
    assert mlr["metrics"]["iqm"]["value"] == pytest.approx(np.sort(x.ravel())[1:3].mean())
    assert mlr["metrics"]["optimality_gap"]["value"] == pytest.approx(1 - np.minimum(x, 1).mean())
    assert mlr["metrics"]["median"]["value"] == pytest.approx(np.median(x.mean(axis=0)))
    assert mlr["paper"]["iqm"] == 0.432 and mlr["paper"]["optimality_gap"] == 0.522
    for est in mlr["metrics"].values():
        assert est["low"] <= est["value"] <= est["high"]
    # every mlr run beats every Baseline run on both games
    (imp,) = [i for i in rep["improvements"] if (i["x"], i["y"]) == ("mlr", "none")]
    assert (imp["value"], imp["low"], imp["high"], imp["tasks"]) == (1.0, 1.0, 1.0, 2)
    assert {(i["x"], i["y"]) for i in rep["improvements"]} == {("mlr", "none"), ("none", "mlr")}
    (curve,) = rep["curves"]  # the Baseline runs logged no periodic evaluation
    assert curve["aux"] == "mlr" and curve["steps"] == [50, 100] and curve["metric"] == "iqm"
    assert curve["value"][1] == pytest.approx(mlr["metrics"]["iqm"]["value"])
    assert rep["warnings"] == []


def test_compare_restricts_and_names_missing_methods():
    rep = report.build_report(ATARI, compare=("none", "mlr"), reps=200)
    assert [(i["x"], i["y"], i["value"]) for i in rep["improvements"]] == [("none", "mlr", 0.0)]
    with pytest.raises(report.ReportError, match=r"--compare mlr,spr: atari 100k has runs of \['mlr', 'none'\]"):
        report.build_report(ATARI, compare=("mlr", "spr"), reps=200)


def test_uneven_seeds_are_reported_not_flattened():
    runs = ATARI + [record("pong", "mlr", 3, 10.0)]
    rep = report.build_report(runs, reps=200)
    assert rep["warnings"] == ["atari 100k mlr: uneven seeds: boxing 2, pong 3; the aggregates "
                               "use the 2 seed(s) every game/task has ([1, 2])"]
    mlr = next(a for a in rep["aggregates"] if a["aux"] == "mlr")
    assert mlr["seeds"] == [1, 2]
    assert next(r for r in rep["rows"] if (r["name"], r["aux"]) == ("pong", "mlr"))["seeds"] == 3


def test_mixed_protocols_and_unknown_methods_are_refused():
    other = ATARI[:-1] + [record("boxing", "none", 2, 4.0, protocol={**PROTOCOL, "episodes": 10,
                                                                      "noop_max": 0})]
    with pytest.raises(report.ReportError, match=r"runs/pong_mlr_1 and runs/boxing_none_2 were "
                                                 r"evaluated under different protocols \(episodes: "
                                                 r"100 vs 10; noop_max: 30 vs 0\)"):
        report.build_report(other)
    with pytest.raises(ValueError, match="did you mean 'mlr'"):
        report.build_report([record("pong", "mlrr", 1, 3.0)])


def _write_run(root, domain, name, aux, seed, scores, evals, unit=1):
    run = root / f"{domain}_{name}_{aux}_s{seed}"
    run.mkdir(parents=True)
    config = {"aux": aux, "run": {"seed": seed}}
    if domain == "dmc":
        config["action_repeat"] = unit
    (run / "config.json").write_text(json.dumps(config))
    budget = "100k"
    final = {**evaluation.summarize_scores(domain, name, scores, budget), "protocol": PROTOCOL}
    (run / "final_eval.json").write_text(json.dumps(final))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "eval/mean": m, "eval/std": 1.0}) + "\n" for s, m in evals))


def test_cli_report_writes_tables_csv_and_figures(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for aux, shift in (("mlr", 100.0), ("none", 0.0)):
        for seed in (1, 2, 3):
            for task in ("cartpole_swingup", "walker_walk"):
                curve = [(s, 100.0 + shift * s / 1250 + rng.normal(0, 20)) for s in (625, 1250)]
                _write_run(tmp_path / "runs", "dmc", task, aux, seed, [curve[-1][1]], curve, unit=8)
    assert cli.main(["report", str(tmp_path / "runs"), "--compare", "mlr,none", "--reps", "300",
                     "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    for name in ("report.md", "report.json", "scores.csv", *report.FIGURES):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 12 and list(rows[0]) == ["domain", "budget", "task", "aux", "seed",
                                                  "score", "normalized_score"]
    text = (out / "report.md").read_text()
    assert "| dmc | 100k | mlr | 2 x 3 | Mean |" in text and "P(mlr > none)" in text
    assert "![sample_efficiency.png](sample_efficiency.png)" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["curves"][0]["steps"] == [5000, 10000]  # environment steps: 625 x action repeat 8
    assert "written to" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(tmp_path / "runs"), "--compare", "mlr"])
    assert exit_info.value.code == 2
    assert "--compare takes two methods" in capsys.readouterr().err


def test_a_full_size_report_aggregates_every_game_and_seed():
    """26 games x 10 seeds x 2 methods at the default replicates (the sweep's report), on
    synthetic scores: every game and seed enters each aggregate, whose point estimates equal
    the formulas on the human-normalised score matrix, with the interval around them."""
    rng = np.random.default_rng(1)
    games = sorted(evaluation.reference_scores()["atari100k"]["games"])
    runs = [record(g, aux, s, float(rng.normal(100, 30))) for aux in ("mlr", "none")
            for s in range(10) for g in games]
    rep = report.build_report(runs)
    assert len(rep["aggregates"]) == 2 and len(rep["improvements"]) == 2
    assert rep["reps"] == stats.DEFAULT_REPS
    for agg in rep["aggregates"]:
        x = np.array([[hn(g, r["mean"]) for g in games for r in runs
                       if (r["name"], r["aux"], r["seed"]) == (g, agg["aux"], s)] for s in range(10)])
        assert x.shape == (10, 26) and agg["tasks"] == games and agg["seeds"] == list(range(10))
        iqm = agg["metrics"]["iqm"]
        assert iqm["value"] == pytest.approx(np.sort(x.ravel())[65:195].mean())
        assert iqm["low"] <= iqm["value"] <= iqm["high"]
        assert agg["metrics"]["mean"]["value"] == pytest.approx(x.mean())
