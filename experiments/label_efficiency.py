r"""Where SSL helps: test AUC against the number of labelled subjects, SSL probe vs scratch.

Command (CPU, 2 cores; run from the repository root; reuses the 2,000-subject cohort of
``experiments/pipeline_2000.py``)::

    .venv/bin/python experiments/label_efficiency.py \
        --segments runs/pipeline_2000/segments --data runs/pipeline_2000/data \
        --out runs/label_efficiency

What it measures. One fixed stratified test set of 500 subjects (seed 0, 25 %); the other 1,500
are the pool. One width-8 ResNet-18 is pretrained with SimCLR (the demo's SSL settings: 28/14 px
custom multi-crop, batch 64, LARS) on the segments of EVERY subject, test subjects included,
labels unused: a transductive choice (the unlabelled images of the test subjects are seen by
the pretext task, never their labels), the usual setting for "unlabelled data is plentiful".
Then, for n in (24, 48, 96, 192, all 1,500) labelled subjects and 3 seeds, a stratified random
subset of the pool (nested: per seed, each class's pool subjects are shuffled once and the
first k_c(n) taken), split into 80 % training and a stratified 20 % validation (at least 2
subjects of each class) that picks the checkpoint by validation macro-F1: the label budget is
n in total. Both arms see the same subsets:

* ``ssl``: linear probe on the frozen SimCLR backbone (``ClsConfig(mode="probe")``, the demo's
  30 epochs, lr 3e-3);
* ``scratch``: the same ResNet trained end to end from random initialisation
  (``mode="finetune"``, 10 epochs, lr 1e-3 for all layers, as ``experiments/cls_quality.py``'s
  scratch row; 10 epochs at n = 1,500 took ~4.5 min a seed, which set the budget);
* ``clinical``: logistic regression on age and sex fitted on the same n subjects (reference);
* ``bayes_image``: the generator's exact image posterior on the test subjects (the ceiling).

At n = all the seeds share the labelled subjects and differ only in the validation cut,
initialisation and shuffling.

Epochs per fit are ``max(epochs, ceil(min_steps / steps_per_epoch))`` so a tiny training set
still gets ``--min-steps`` optimiser steps. Subject probability = mean of its 7 segments'. On
the test set: AUC per seed, mean, 95 % interval (hierarchical bootstrap over seeds and test
subjects), and the paired SSL - scratch difference (paired hierarchical bootstrap, the same
test subjects).

Writes ``OUT/label_efficiency.json`` (every number, config, wall times, the SSL loss curve),
``OUT/label_efficiency.png``, ``OUT/predictions.npz`` (test probabilities of every fit) and the
run folders ``OUT/ssl``, ``OUT/cls/<arm>_n<n>_seed<k>`` (every stage resumes when rerun).

Measured (2026-12-01, 2 shared CPU cores, load ~5; ``--out /work/main/runs/label_efficiency``
with the absolute pipeline_2000 paths, all other arguments default): 3,035 s wall in all, of
which SimCLR 860 s (8 epochs, 1,680 steps; loss per-epoch mean 5.909 -> 5.051, first/last
logged step 5.971 -> 5.085: it falls), scratch fits 50-120 s at n <= 192 and ~275 s at
n = 1,500, probe fits 7-35 s. Test: 500 subjects (154 osteoporotic); pool 1,500 (461).

| n | SSL probe | random probe | scratch | SSL - scratch | SSL - random | clin. |
|---|---|---|---|---|---|---|
| 24 | 0.735 | 0.581 | 0.549 | +0.186 [+0.078, +0.302] | +0.154 [+0.106, +0.210] | 0.870 |
| 48 | 0.751 | 0.628 | 0.619 | +0.132 [+0.042, +0.258] | +0.122 [+0.061, +0.192] | 0.872 |
| 96 | 0.755 | 0.620 | 0.701 | +0.055 [+0.003, +0.099] | +0.135 [+0.064, +0.218] | 0.867 |
| 192 | 0.768 | 0.703 | 0.682 | +0.087 [+0.049, +0.124] | +0.065 [+0.017, +0.113] | 0.873 |
| 1,500 | 0.780 | 0.757 | 0.775 | +0.005 [-0.007, +0.016] | +0.023 [-0.001, +0.050] | 0.874 |

(Arm intervals in the JSON. The random-backbone arm, a linear probe on the same ResNet frozen
at its random initialisation, was added after the first run; the rerun restored every other fit
from its checkpoint: 15 new probe fits in ~10 min beside ``make test``.)

Bayes image posterior on the same test subjects: AUC 0.887 [0.858, 0.915] (cohort image
ceiling 0.884). Reading: SSL beats scratch at every n up to 192 labelled subjects (paired
interval above 0; the margin shrinks from +0.19 at 24 to +0.06-0.09 at 96-192), and at the
whole pool (1,500) there is no measurable difference. It also beats a probe on random frozen
features up to 192 (so SimCLR learned something a frozen probe alone does not give), and not
measurably at 1,500. Neither image arm reaches the clinical (age + sex) logistic regression,
which is ~0.87 already from 24 subjects, nor the image ceiling (the probe stays ~0.11 below it
even with all labels).

Synthetic data: these numbers say how well the method recovers what the generator planted;
they are not clinical performance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from osteo_jax.config import ClsConfig, SSLConfig

ARMS = ("ssl", "random", "scratch")
DEFAULT_NS = (24, 48, 96, 192, 0)  # 0: every pool subject
TRANSDUCTIVE = (
    "SimCLR is pretrained once on the segments of all subjects (pool and test), labels "
    "unused: transductive with respect to the test images, never their labels"
)


def get_config(
    ssl_epochs: int = 8, epochs_probe: int = 30, epochs_scratch: int = 10, ssl_max_steps: int = 0
) -> dict:
    """The SSL settings (the demo's, ``ssl_epochs`` epochs) and the classifier of each arm."""
    from osteo_jax.pipeline.experiment import demo_config

    demo = demo_config().protocol
    ssl: SSLConfig = dataclasses.replace(demo.ssl, epochs=ssl_epochs, seed=0)
    if ssl_max_steps:
        ssl = dataclasses.replace(ssl, max_steps=ssl_max_steps)
    probe = dataclasses.replace(demo.cls, mode="probe", epochs=epochs_probe)
    scratch = ClsConfig(
        mode="finetune", epochs=epochs_scratch, learning_rate=1e-3, backbone_lr_scale=1.0
    )
    return {
        "ssl": ssl,
        "backbone": demo.backbone,
        "cls": {"ssl": probe, "random": probe, "scratch": scratch},
    }


def class_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """Stratified allocation of ``n`` over classes of sizes ``counts`` (largest remainder).

    ``n * counts / counts.sum()`` floored, the remaining units given to the largest fractional
    parts (ties to the lower class index), so the result sums to exactly ``n``.
    """
    counts = np.asarray(counts, np.int64)
    if not 0 < n <= counts.sum():
        raise ValueError(f"n must be in [1, {counts.sum()}], got {n}")
    quota = n * counts / counts.sum()
    k = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - k), kind="stable")
    k[order[: n - k.sum()]] += 1
    return k


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def labelled_subsets(
    subjects: np.ndarray,
    labels: np.ndarray,
    ns: tuple[int, ...],
    seed: int,
    *,
    val_fraction: float = 0.2,
    min_val: int = 2,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Nested stratified labelled subsets of a pool, each cut into training and validation.

    Each class's pool subjects are shuffled once (seeded); the subset of size ``n`` takes the
    first ``k_c(n)`` of class ``c`` (:func:`class_counts`), so subsets grow by inclusion. Of
    these, the first ``max(min_val, round(val_fraction * k_c))`` are validation, the rest
    training: the label budget is ``n`` in total.

    Args:
      subjects: ``[m]`` pool subject ids (unique).
      labels: ``[m]`` their labels (0/1).
      ns: subset sizes; 0 means the whole pool.
      seed: shuffling seed.
      val_fraction: validation share of each class.
      min_val: fewest validation subjects of each class.

    Returns:
      ``{n: (train subject ids, val subject ids)}``, each sorted (``n`` as given, 0 kept).

    Raises:
      ValueError: duplicate subjects, or an ``n`` leaving a class with fewer than
        ``min_val + 1`` subjects.
    """
    subjects, labels = np.asarray(subjects), np.asarray(labels)
    if len(np.unique(subjects)) != len(subjects):
        raise ValueError("pool subject ids must be unique")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1AB3]))
    order = [rng.permutation(subjects[labels == c]) for c in classes]
    out = {}
    for n in ns:
        k = class_counts(counts, n or len(subjects))
        train, val = [], []
        for members, k_c, c in zip(order, k, classes, strict=True):
            v = max(min_val, _round_half_up(val_fraction * k_c))
            if k_c < v + 1:
                raise ValueError(f"n={n}: {k_c} subjects of class {c}, need >= {v + 1}")
            val.append(members[:v])
            train.append(members[v:k_c])
        out[n] = (np.sort(np.concatenate(train)), np.sort(np.concatenate(val)))
    return out


def fit_epochs(base: int, n_segments: int, batch_size: int, min_steps: int) -> int:
    """Epochs giving at least ``min_steps`` steps of full batches (``train_classifier``'s)."""
    steps = n_segments // min(batch_size, n_segments)
    return max(base, math.ceil(min_steps / steps))


def _ssl_loss_curve(run_dir: Path) -> dict:
    """Start/end of the logged SimCLR loss and its mean per epoch (``metrics.jsonl``)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    by_step = {r["step"]: r for r in rows}  # a resumed run may log a step twice
    rows = [by_step[s] for s in sorted(by_step)]
    epochs = sorted({r["epoch"] for r in rows})
    per_epoch = [float(np.mean([r["loss"] for r in rows if r["epoch"] == e])) for e in epochs]
    return {
        "first_logged": {"step": rows[0]["step"], "loss": rows[0]["loss"]},
        "last_logged": {"step": rows[-1]["step"], "loss": rows[-1]["loss"]},
        "mean_per_epoch": [round(v, 4) for v in per_epoch],
        "fell": bool(per_epoch[-1] < per_epoch[0] - 0.05),
    }


def _auc_summary(per_seed: list, n_boot: int) -> dict:
    from osteo_jax.eval.cls_stats import summarise_seeds

    return summarise_seeds(per_seed, n_boot=n_boot)["auc"]


def _figure(summary: dict, ceiling: dict, pool: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(int(n) for n in summary)
    x = [n or pool for n in ns]
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {
        "ssl": ("SimCLR + linear probe", "C0", "-"),
        "random": ("linear probe on a random frozen backbone", "C7", ":"),
        "scratch": ("supervised from scratch", "C3", "-"),
        "clinical": ("clinical (age + sex)", "0.4", "--"),
    }
    for arm, (label, color, ls) in styles.items():
        rows = [summary[str(n)][arm] for n in ns]
        mean = [r["mean"] for r in rows]
        ax.plot(x, mean, ls, color=color, marker="o", ms=4, label=label)
        if arm != "clinical":
            lo, hi = zip(*(r["ci95"] for r in rows), strict=True)
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
    ax.axhline(ceiling["mean"], color="k", lw=1, label="Bayes image posterior (ceiling)")
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.minorticks_off()
    ax.set_xlabel("labelled subjects (train + validation)")
    ax.set_ylabel("test AUC (500 subjects)")
    ax.set_title("Label efficiency, synthetic cohort (mean, 95 % interval)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    """Runs the experiment; writes and returns the result (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    from osteo_jax.data.folder import read_csv, write_json
    from osteo_jax.data.segments import load_segments
    from osteo_jax.data.splits import stratified_subject_split
    from osteo_jax.eval.baselines import fit_logistic, predict_probability
    from osteo_jax.eval.cls_metrics import binary_metrics, subject_metrics, subject_scores
    from osteo_jax.eval.cls_stats import CI_METHOD, PAIRED_METHOD, paired_difference
    from osteo_jax.eval.subject_features import read_covariates
    from osteo_jax.train.cls_loop import backbone_features, predict_segments, train_classifier
    from osteo_jax.train.ssl_loop import train_ssl

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_config(args.ssl_epochs, args.epochs_probe, args.epochs_scratch, args.ssl_max_steps)
    backbone = cfg["backbone"]
    seg = load_segments(args.segments)
    seg = seg.take(np.flatnonzero(seg.labels >= 0))
    if len(np.unique(seg.subject_ids)) != len(seg):
        raise SystemExit("expected one image per subject")

    # 1. The fixed test set and the pool.
    frac = args.test_subjects / len(seg)
    pool_idx, _, test_idx = stratified_subject_split(
        seg.subject_ids, seg.labels, (1 - frac, 0.0, frac), seed=args.test_seed
    )
    test = seg.take(test_idx)
    test_ids = np.unique(test.subject_ids)
    pool_ids, pool_labels = seg.subject_ids[pool_idx], seg.labels[pool_idx]
    index_of = {s: i for i, s in enumerate(seg.subject_ids)}

    def take(ids: np.ndarray):
        return seg.take(np.array([index_of[s] for s in ids]))

    # 2. One SimCLR backbone on every subject's segments (transductive, labels unused).
    ssl_dir = out / "ssl"
    t_ssl = time.perf_counter()
    pre = train_ssl(seg, ssl_dir, cfg["ssl"], progress=False, log_every=10)
    ssl_wall = time.perf_counter() - t_ssl
    # Host copy: train_classifier donates its state, so each probe gets fresh device arrays.
    ssl_backbone = jax.device_get(pre["state"].params["backbone"])
    loss = _ssl_loss_curve(ssl_dir)
    print(
        f"ssl: {pre['steps']} steps in {ssl_wall:.0f} s (this call); loss "
        f"{loss['mean_per_epoch'][0]:.3f} (epoch 0 mean) -> {loss['mean_per_epoch'][-1]:.3f} "
        f"(last epoch mean){'' if loss['fell'] else '  -- DID NOT FALL'}"
    )
    ti, tb = np.nonzero(test.valid)
    test_features = backbone_features(ssl_backbone, backbone, test.images[ti, tb])

    # References: clinical covariates and the Bayes image posterior on the test subjects.
    cov = read_covariates(args.data, ("age", "sex"))
    cov_row = {s: i for i, s in enumerate(cov.subject_ids)}
    ceiling_rows = {
        r["subject_id"]: float(r["p_image"]) for r in read_csv(Path(args.data) / "ceiling.csv")
    }
    _, y_test = subject_scores(np.full(test.valid.shape, 0.5), test)
    p_bayes = np.array([ceiling_rows[s] for s in test_ids])
    x_test = cov.values[[cov_row[s] for s in test_ids]]
    label_of = dict(zip(seg.subject_ids, seg.labels, strict=True))

    seeds = list(range(args.seeds))
    subsets = {
        s: labelled_subsets(
            pool_ids, pool_labels, tuple(args.ns), s, val_fraction=args.val_fraction
        )
        for s in seeds
    }
    fits, preds, per = [], {}, {}
    for n in args.ns:
        n_seeds = seeds if n else seeds[: args.seeds_all]
        for s in n_seeds:
            tr_ids, va_ids = subsets[s][n]
            tr, va = take(tr_ids), take(va_ids)
            n_seg = int(tr.valid.sum())
            for arm in ARMS:
                base = cfg["cls"][arm]
                epochs = fit_epochs(base.epochs, n_seg, base.batch_size, args.min_steps)
                cls = dataclasses.replace(base, epochs=epochs)
                params = None
                if arm == "ssl":
                    params = {"backbone": jax.tree.map(jnp.array, ssl_backbone)}
                res = train_classifier(
                    tr,
                    va,
                    out / "cls" / f"{arm}_n{n or 'all'}_seed{s}",
                    cls,
                    evaluate_fn=subject_metrics,
                    backbone_cfg=backbone,
                    params=params,
                    seed=s,
                    progress=False,
                )
                feats = test_features if arm == "ssl" else None
                probs = predict_segments(res["params"], backbone, test, features=feats)
                p, y = subject_scores(probs, test)
                assert np.array_equal(y, y_test)
                preds[f"{arm}_n{n or 'all'}_seed{s}"] = p
                per.setdefault((arm, n), []).append(p)
                auc = binary_metrics(p, y)["auc"]
                fits.append(
                    {
                        "arm": arm,
                        "n": n or len(pool_ids),
                        "seed": s,
                        "n_train": len(tr_ids),
                        "n_val": len(va_ids),
                        "n_train_positive": int(sum(label_of[i] for i in tr_ids)),
                        "epochs": epochs,
                        "best_epoch": res["best_epoch"],
                        "val_auc": res["val"].get("auc"),
                        "test_auc": auc,
                        "wall_s": round(res["wall_s"], 1),
                    }
                )
                print(
                    f"{arm:8s} n={n or len(pool_ids):5d} seed={s} train={len(tr_ids):4d} "
                    f"val={len(va_ids):3d} epochs={epochs:3d} best={res['best_epoch']:3d} "
                    f"test AUC {auc:.3f}  ({res['wall_s']:.0f} s)",
                    flush=True,
                )
            lab = np.concatenate([tr_ids, va_ids])
            model = fit_logistic(
                cov.values[[cov_row[i] for i in lab]], np.array([label_of[i] for i in lab])
            )
            p_clin = predict_probability(model, x_test)
            preds[f"clinical_n{n or 'all'}_seed{s}"] = p_clin
            per.setdefault(("clinical", n), []).append(p_clin)
        np.savez(out / "predictions.npz", test_subjects=test_ids, labels=y_test, **preds)

    summary = {}
    for n in args.ns:
        row = {
            arm: _auc_summary([(p, y_test) for p in per[(arm, n)]], args.bootstrap)
            for arm in (*ARMS, "clinical")
        }
        row["ssl_minus_scratch"] = paired_difference(
            [(a, b, y_test) for a, b in zip(per[("ssl", n)], per[("scratch", n)], strict=True)],
            n_boot=2 * args.bootstrap,
        )
        row["ssl_minus_random"] = paired_difference(
            [(a, b, y_test) for a, b in zip(per[("ssl", n)], per[("random", n)], strict=True)],
            n_boot=2 * args.bootstrap,
        )
        row["n_labelled"] = n or len(pool_ids)
        summary[str(n or len(pool_ids))] = row
    ceiling = _auc_summary([(p_bayes, y_test)], args.bootstrap)
    oracle = json.loads((Path(args.data) / "oracle.json").read_text())
    _figure(
        {k: v for k, v in summary.items()}, ceiling, len(pool_ids), out / "label_efficiency.png"
    )
    result = {
        "description": __doc__.split("\n")[0],
        "synthetic": True,
        "transductive_ssl": TRANSDUCTIVE,
        "args": vars(args),
        "config": {
            "ssl": dataclasses.asdict(cfg["ssl"]),
            "backbone": dataclasses.asdict(backbone),
            "cls": {k: dataclasses.asdict(v) for k, v in cfg["cls"].items()},
            "epochs_rule": f"max(epochs, ceil({args.min_steps} / steps_per_epoch))",
            "validation": f"stratified {args.val_fraction:.0%} of the n labelled subjects, "
            ">= 2 per class; checkpoint by validation macro-F1",
        },
        "test": {
            "n_subjects": len(test_ids),
            "n_osteoporotic": int(y_test.sum()),
            "seed": args.test_seed,
        },
        "pool": {"n_subjects": len(pool_ids), "n_osteoporotic": int(pool_labels.sum())},
        "ssl": {"steps": pre["steps"], "wall_s_this_call": round(ssl_wall, 1), "loss": loss},
        "ceiling": {
            "bayes_image_auc_test": ceiling,
            "image_ceiling_auc_cohort": oracle["image_ceiling_auc"],
        },
        "summary": summary,
        "ci_method": CI_METHOD,
        "paired_method": PAIRED_METHOD,
        "fits": fits,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "label_efficiency.json", result)
    print(table(result))
    print(f"wrote {out / 'label_efficiency.json'} and {out / 'label_efficiency.png'}")
    return result


def table(result: dict) -> str:
    """Markdown: per n, the AUC of each arm (mean [95 % CI]) and the paired SSL - scratch."""

    def cell(d: dict) -> str:
        lo, hi = d["ci95"]
        return f"{d['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [
        "| n labelled | SSL probe | random-backbone probe | scratch | SSL - scratch "
        "| SSL - random | clinical |",
        "|---|---|---|---|---|---|---|",
    ]

    def delta(d: dict) -> str:
        return f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

    for n, row in result["summary"].items():
        lines.append(
            f"| {n} | {cell(row['ssl'])} | {cell(row['random'])} | {cell(row['scratch'])} | "
            f"{delta(row['ssl_minus_scratch'])} | {delta(row['ssl_minus_random'])} | "
            f"{cell(row['clinical'])} |"
        )
    c = result["ceiling"]["bayes_image_auc_test"]
    lines.append(f"\nBayes image posterior on the test subjects: {cell(c)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", default="runs/pipeline_2000/segments")
    parser.add_argument("--data", default="runs/pipeline_2000/data")
    parser.add_argument("--out", default="runs/label_efficiency")
    parser.add_argument("--test-subjects", type=int, default=500)
    parser.add_argument("--test-seed", type=int, default=0)
    parser.add_argument(
        "--ns",
        type=int,
        nargs="+",
        default=list(DEFAULT_NS),
        help="labelled subjects; 0 = the whole pool",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seeds-all", type=int, default=3, help="seeds for n = whole pool")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--ssl-epochs", type=int, default=8)
    parser.add_argument("--ssl-max-steps", type=int, default=0, help="smoke runs only")
    parser.add_argument("--epochs-probe", type=int, default=30)
    parser.add_argument("--epochs-scratch", type=int, default=10)
    parser.add_argument("--min-steps", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=1000)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
