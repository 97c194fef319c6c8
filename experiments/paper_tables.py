r"""The paper's Tables 6, 7, 8 and its ablations on one dataset, every row over 3 seeds.

Commands (2 CPU cores; the segmenter runs are reused if present, trained if not)::

    .venv/bin/python experiments/paper_tables.py --tables 7,ablations --size demo \
        --out runs/paper_tables_demo
    .venv/bin/python experiments/paper_tables.py --tables 6,7,8,ablations --size cpu \
        --out runs/paper_tables_cpu

Every row is a :class:`Row` of ``experiments/tables.py`` (``Row.config(size)`` builds its
:class:`~osteo_jax.config.ProtocolConfig`; ``segments``, ``roi``, ``model`` and ``paper`` say
which segments it reads, how the table names it and what the paper reported), run with the
paper's protocol by :func:`osteo_jax.pipeline.protocol.run_protocol`: stratified subject-wise
80/10/10 split per seed, pretraining on the training subjects only, checkpoint by validation
macro-F1, mean ± std over the seeds of the positive-class F1, AUC and accuracy.

* Table 8 (baselines): crop-based VGG with a manual and with an automatic ROI (background kept),
  Wang et al.'s VGG16 + Transformer (paper only, not reproduced), DeepDXA-like segments ->
  ResNet-18 trained end to end, and the paper's full pipeline.
* Table 7: SimCLR, VICReg, SupCon, SwAV x ordinary / custom multi-crop.
* Table 6: no SSL (linear probe on a random backbone; trained from scratch) vs SimCLR.
* Ablations: raw image instead of segments, single U-Net instead of the mixture, no SSL,
  ordinary multi-crop, against the full pipeline.

Sizes (``experiments/tables.py``): ``demo`` (width-4 backbones, 32 px, 3 SSL epochs,
2 + 2 views), ``cpu`` (as ``experiments/cls_quality.py``: ~8 min per SSL row, ~15 min for a
from-scratch row), ``paper`` (ResNet-50 / VGG-16 at width 64, 128 px: a GPU). Measured for
``--tables 7,ablations --size demo`` on 2 CPU cores shared with other jobs (load ~8): 1535 s
(10 SSL rows of 100-160 s, the from-scratch row 138 s), plus ~110 s to cut the mixture segments
(cached from an earlier run); AUCs 0.61-0.73, seed std 0.03-0.18: at this size the rows are
not told apart, the demo checks the machinery and the layout. Those numbers were measured before
the Bayes ceilings and the baselines existed and were not re-run: that 192-subject cohort's image
ceiling is 0.875 (age + sex ceiling 0.875, image + age + sex 0.898; the hand latent's AUC, 0.73,
shown beside them then, is no ceiling), so every row sat 0.14-0.26 below the image ceiling, and
none was compared with the clinical baseline.

Ablations at the ``cpu`` size (issue 12, target 5), measured 2026-12-01 on the demo's
192-subject cohort (``--data runs/demo_i12/data --seg-epochs 20``; both segmenters trained here
at 128 px for 20 epochs: mixture Dice 0.929 with 4 experts alive (mean weights 0.24, 0.12,
0.28, 0.36), U-Net Dice 0.935), 3 seeds, 5,547 s on 2 CPU cores shared with other work. AUC and
the row minus the full pipeline on the same test subjects (paired 95 % interval): full pipeline
0.73; ordinary multi-crop 0.74 (+0.013, -0.100 to +0.126); no SSL, from scratch 0.73 (-0.000,
-0.165 to +0.169); raw image 0.71 (-0.021, -0.328 to +0.288); single U-Net 0.74 (+0.017, -0.199
to +0.159). No difference is real on this data; every row is 0.17-0.21 below the clinical
baseline on its test subjects (0.91) and far below the Bayes image posterior there (0.93).

Everything is cached under ``OUT/cache`` and a re-run resumes: segments per (source, segment
config), pretraining runs per (segments, bones, split, SSL config), so rows that share them
(e.g. a probe and a fine-tune of one SSL method) pretrain once, and row results per
(segments, full config), so a row used by several tables (or two rows with the same config at
a small size) is run once. XLA compilations are cached on disk too (seeds share them).

After each row's protocol, :func:`osteo_jax.pipeline.comparison.compare_rows` scores on the same
test subjects of every seed a clinical baseline (logistic regression on age and sex, fitted on
the row's training subjects) and the generator's exact Bayes posteriors; the tables show beside
each row its clinical baseline, the row's paired Δ AUC against it (95 % interval) and the Bayes
image posterior, and each row folder keeps the full ``comparison.md``.

Synthetic data: the numbers say how well each pipeline recovers what the generator planted, read
against two rulers: the image ceiling (``image_ceiling_auc``, the AUC of the exact posterior
given everything label-bearing the image shows, the most an image classifier can reach in
expectation; cohort and population) and the clinical baseline (age and sex, which the image
also shows). The other ceilings: ``clinical_ceiling_auc`` (age + sex) and
``image_clinical_ceiling_auc`` (image + age + sex, a fusion model's ceiling); the hand latent's
AUC (``hand_latent_auc``) describes the generator's coupling and is not a ceiling. No clinical
result; the paper's column (real radiographs) is there for the layout and the ordering of rows,
not as a target.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

from osteo_jax.eval.cls_stats import CI_METHOD, PAIRED_METHOD
from osteo_jax.eval.headline import delta_cell

HERE = Path(__file__).resolve().parent


def load_module(path: Path) -> ModuleType:
    """Imports a Python file by path, as ``osteo-jax --config`` does."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The rows (their configs, segment sources, the paper's numbers) and the size presets.
row_specs = load_module(HERE / "tables.py")

# Under every table: what the intervals are and what the baseline columns hold.
FOOTER = (
    "Ours: mean ± std over the seeds; AUC 95 % CI: "
    + CI_METHOD
    + ". Clinical (age, sex): a logistic regression fitted on the row's training subjects; "
    "Bayes posterior: the generator's exact posterior given the image; both scored on the row's "
    "own test subjects. Δ AUC vs clinical: the row's AUC minus the clinical baseline's on the "
    "same subjects, 95 % interval by " + PAIRED_METHOD + "; * = the interval excludes 0. "
    "Δ AUC vs full pipeline: the row's AUC minus the full pipeline's (SimCLR, custom multi-crop, "
    "mixture segments) on the same test subjects of every seed, the same paired interval: "
    "negative where the change costs. Image ceiling: the Bayes image posterior's AUC over the "
    "whole cohort."
)

# The row every other row is paired with (the paper's full pipeline).
FULL_ROW = "simclr_custom"

TABLES = {
    "8": {
        "title": "Table 8: comparison with earlier methods",
        "columns": (("model", "model"), ("ROI", "roi"), ("backbone", "backbone")),
        "rows": ("vgg_manual_crop", "vgg_landmark_crop", "wang", "deepdxa", "simclr_custom"),
    },
    "7": {
        "title": "Table 7: SSL methods x multi-crop (mixture segments, linear probe)",
        "columns": (("SSL method", "method"), ("multi-crop", "crop")),
        "rows": (
            "simclr_ordinary",
            "simclr_custom",
            "vicreg_ordinary",
            "vicreg_custom",
            "supcon_ordinary",
            "supcon_custom",
            "swav_ordinary",
            "swav_custom",
        ),
    },
    "6": {
        "title": "Table 6: without SSL (mixture segments)",
        "columns": (("model", "model"), ("classifier", "classifier"), ("backbone", "backbone")),
        "rows": ("no_ssl_probe", "no_ssl_scratch", "simclr_custom"),
    },
    "ablations": {
        "title": "Ablations of the full pipeline",
        "columns": (("ablation", "model"), ("ROI", "roi")),
        "rows": ("simclr_custom", "simclr_ordinary", "no_ssl_scratch", "raw_simclr", "unet_simclr"),
    },
}


def describe(row, size: str) -> dict:
    """The table cells of ``row`` (a ``tables.Row``) that do not depend on results; its config."""
    cfg = row.config(size)
    backbone = cfg.ssl.backbone if cfg.ssl is not None else cfg.backbone
    return {
        "model": row.model,
        "roi": row.roi,
        "backbone": backbone.label,
        "method": row_specs.SSL_LABELS[cfg.ssl.method] if cfg.ssl is not None else "none",
        "crop": ("custom" if cfg.ssl.crops.custom else "ordinary") if cfg.ssl else "–",
        "classifier": "linear probe" if cfg.cls.mode == "probe" else "end to end",
        "segments": row.segments,
        "paper": dataclasses.asdict(row.paper),
        "config": cfg,
    }


def _cell(stat: dict | None) -> str:
    return "–" if stat is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _ci_cell(stat: dict | None) -> str:
    if stat is None or stat.get("ci95") is None:
        return "–"
    lo, hi = stat["ci95"]
    return f"{lo:.2f}–{hi:.2f}"


def _paper_cell(paper: dict | None) -> str:
    paper = paper or {}
    values = [paper.get(k) for k in ("f1", "auc", "accuracy")]
    return " / ".join("–" if v is None else f"{v:.2f}" for v in values)


def format_table(title: str, columns: tuple, records: list[dict]) -> str:
    """Markdown of one table in the paper's layout, the baselines and the paper's numbers beside.

    Args:
      title: heading line.
      columns: ``((header, record key), ...)`` of the leading, descriptive columns.
      records: one dict per row with those keys, ``"summary"`` (``summarise_seeds`` output:
        ``f1_positive``, ``auc``, ``accuracy`` each with ``mean`` and ``std``, the AUC with its
        ``ci95``; None for a row without results, whose F1 cell then reads ``"missing"``,
        default "not reproduced"), ``"paper"`` (``{"f1", "auc", "accuracy"}``, None where not
        reported), ``"image_ceiling_auc"`` and, from ``cls_quality.row_baselines`` (absent or
        None for a row without them), ``"clinical_auc"``, ``"vs_clinical"`` and
        ``"bayes_image_auc"``; ``"vs_full"``: the row's paired Δ AUC against the full pipeline
        (``compare_runs`` output; absent for the full pipeline itself).

    Returns:
      ``### title``, a blank line, the table (``|``-separated, one line per row), a blank line
      and :data:`FOOTER`.
    """
    head = [h for h, _ in columns] + [
        "F1",
        "AUC",
        "AUC 95 % CI",
        "accuracy",
        "clinical (age, sex) AUC",
        "Δ AUC vs clinical (95 % CI)",
        "Bayes posterior: image AUC",
        "Δ AUC vs full pipeline (95 % CI)",
        "paper F1 / AUC / acc.",
        "image ceiling AUC",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        s = r.get("summary")
        if s is None:
            ours = [r.get("missing", "not reproduced"), "–", "–", "–"]
            baselines = ["–", "–", "–", "–"]
        else:
            ours = [
                _cell(s.get("f1_positive")),
                _cell(s.get("auc")),
                _ci_cell(s.get("auc")),
                _cell(s.get("accuracy")),
            ]
            baselines = [
                _cell(r.get("clinical_auc")),
                delta_cell(r.get("vs_clinical"), 2),
                _cell(r.get("bayes_image_auc")),
                delta_cell(r.get("vs_full"), 3) if r.get("vs_full") else "–",
            ]
        ceiling = r.get("image_ceiling_auc")
        cells = [str(r[k]) for _, k in columns] + ours + baselines + [_paper_cell(r.get("paper"))]
        cells.append("–" if ceiling is None or s is None else f"{ceiling:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + FOOTER + "\n"


def _hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def synthetic_note(ceilings: dict) -> str:
    """The plain statement that the numbers come from synthetic data, and their rulers."""
    pop = ceilings.get("population", {})
    n_pop = pop.get("n_subjects")

    def both(key: str) -> str:
        p = pop.get(key)
        return f"{ceilings[key]:.2f}" + ("" if p is None else f" (population {p:.2f})")

    return (
        f"SYNTHETIC DATA: a physics-based synthetic cohort of {ceilings.get('n_subjects', '?')} "
        f"subjects ({ceilings.get('n_osteoporotic', '?')} osteoporotic), not radiographs of "
        "patients. Rulers: the image ceiling, the AUC of the exact Bayes posterior given "
        "everything label-bearing the image shows (the most an image classifier can reach in "
        f"expectation), {both('image_ceiling_auc')}; the clinical baseline on age and sex, whose "
        f"ceiling is {both('clinical_ceiling_auc')}; image + age + sex ceiling "
        f"{both('image_clinical_ceiling_auc')}. The hand bone-health latent's AUC, "
        f"{both('hand_latent_auc')}, is not a ceiling: the image also shows age and sex. "
        + (f"Population: {n_pop:,} subjects of the same generator. " if n_pop else "")
        + "Our columns measure how well each pipeline recovers what the generator planted; the "
        "paper's column is its real-data result (192 subjects), shown for the layout, not as a "
        "target. No clinical claim."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="6,7,8,ablations", help="comma list of 6,7,8,ablations")
    parser.add_argument("--size", default="cpu", choices=row_specs.SIZES)
    parser.add_argument("--data", default="runs/data/paper_1024", help="dataset folder")
    parser.add_argument(
        "--subjects", type=int, default=None, help="cohort size if --data must be generated"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default runs/paper_tables_SIZE)"
    )
    parser.add_argument(
        "--mixture-run",
        default="runs/seg_quality_ce/mixture_spread",
        help="train-seg run of the mixture segmenter (trained if absent)",
    )
    parser.add_argument(
        "--unet-run",
        default="runs/seg_quality_ce/unet",
        help="train-seg run of the single U-Net (trained if absent)",
    )
    parser.add_argument(
        "--seg-epochs", type=int, default=None, help="epochs of a segmenter trained here"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--rows", default=None, help="run only these rows (comma list; others show 'not run')"
    )
    args = parser.parse_args()

    import jax

    out = Path(args.out or f"runs/paper_tables_{args.size}")
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    # Seeds (and rows that differ only in data) compile the same programs: cache them on disk.
    jax.config.update("jax_compilation_cache_dir", str(cache / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    from osteo_jax.pipeline.comparison import compare_rows, compare_runs
    from osteo_jax.pipeline.protocol import run_protocol

    # Dataset, segmenter and segment caching; the baseline cells and the ceilings table.
    helpers = load_module(HERE / "cls_quality.py")

    tables = args.tables.split(",")
    unknown = set(tables) - set(TABLES)
    if unknown:
        raise SystemExit(f"unknown tables {sorted(unknown)}; choose from {tuple(TABLES)}")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    data = Path(args.data)
    ceilings = helpers.ensure_dataset(data, args.subjects)
    seg_runs = {"mixture": Path(args.mixture_run), "unet": Path(args.unet_run)}
    seg_epochs = args.seg_epochs or {"demo": 10}.get(args.size, 40)
    note = synthetic_note(ceilings)
    print(note + "\n\n" + helpers.ceilings_table(ceilings), flush=True)

    t_all = time.perf_counter()
    records: dict[str, dict] = {}
    only = set(args.rows.split(",")) if args.rows else None

    def run_row(name: str) -> dict:
        if name in row_specs.PAPER_ONLY:
            return {**row_specs.PAPER_ONLY[name], "summary": None, "wall_s": 0.0}
        t0 = time.perf_counter()
        rec = describe(row_specs.row(name), args.size)
        cfg = rec.pop("config")
        if only is not None and name not in only:
            return {**rec, "summary": None, "missing": "not run", "wall_s": 0.0}
        cls = dataclasses.replace(cfg.cls, seeds=seeds)
        seg_cfg = row_specs.segment_config(rec["segments"], args.size)
        source = row_specs.SEGMENT_SOURCES[rec["segments"]]
        if source in seg_runs:
            helpers.ensure_segmenter(data, seg_runs[source], source, epochs=seg_epochs)
            source = str(seg_runs[source])
        seg_key = _hash([str(data), source, dataclasses.asdict(seg_cfg)])
        seg_dir = helpers.ensure_segments(
            data, cache / "segments" / f"{rec['segments']}-{seg_key}", source, seg_cfg
        )
        ssl = cfg.ssl
        ssl_dict = dataclasses.asdict(ssl) if ssl is not None else None
        row_dir = (
            cache
            / "rows"
            / _hash(
                [seg_dir.name, ssl_dict, dataclasses.asdict(cls), dataclasses.asdict(cfg.backbone)]
            )
        )
        metrics_file = row_dir / "cls_metrics.json"
        cached = metrics_file.exists()
        if cached:
            result = json.loads(metrics_file.read_text())
        else:
            ssl_dir = None
            if ssl is not None:
                key = _hash([seg_dir.name, ssl_dict, list(cls.bones), list(cls.split)])
                ssl_dir = cache / "ssl" / key
            result = run_protocol(
                seg_dir,
                row_dir,
                ssl=ssl,
                cls=cls,
                backbone=cfg.backbone,
                name=rec["model"],
                roi=rec["roi"],
                ceiling_auc=ceilings["image_ceiling_auc"],
                ssl_dir=ssl_dir,
                progress=False,
            )
        # Cheap (logistic regressions and bootstraps); segments only for folders cached before
        # the validation predictions were saved.
        comparison = compare_rows(row_dir, data, segments=seg_dir, n_boot=cls.bootstrap)
        base = helpers.row_baselines(comparison)
        wall = time.perf_counter() - t0
        rec.update(
            summary=result["summary"],
            image_ceiling_auc=ceilings["image_ceiling_auc"],
            image_ceiling_auc_population=ceilings.get("population", {}).get("image_ceiling_auc"),
            **base,
            comparison=str(row_dir / "comparison.json"),
            wall_s=round(wall, 1),
            protocol_wall_s=result["wall_s"],
            cached=cached,
            run_dir=str(row_dir),
            segments_dir=str(seg_dir),
        )
        s = result["summary"]
        print(
            f"{name}: F1 {_cell(s['f1_positive'])}, AUC {_cell(s['auc'])} "
            f"({_ci_cell(s['auc'])}), accuracy {_cell(s['accuracy'])}; same test subjects: "
            f"clinical (age, sex) AUC {_cell(base['clinical_auc'])}, Δ AUC vs clinical "
            f"{delta_cell(base['vs_clinical'], 2)}, Bayes posterior: image AUC "
            f"{_cell(base['bayes_image_auc'])} "
            f"(image ceiling {ceilings['image_ceiling_auc']:.2f}); "
            f"{'cached' if cached else f'{wall:.0f} s'}",
            flush=True,
        )
        return rec

    outputs = {}
    for table in tables:
        spec = TABLES[table]
        t_table = time.perf_counter()
        for name in spec["rows"]:
            if name not in records:
                records[name] = run_row(name)
        rows = [records[name] for name in spec["rows"]]
        markdown = format_table(spec["title"], spec["columns"], rows)
        outputs[table] = {
            "title": spec["title"],
            "rows": list(spec["rows"]),
            "markdown": markdown,
            "wall_s": round(time.perf_counter() - t_table, 1),
        }

    wall = round(time.perf_counter() - t_all, 1)
    # Tables of an earlier run with the same data, size and seeds stay in the output files.
    json_path = out / "paper_tables.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    if (previous.get("data"), previous.get("size"), previous.get("seeds")) == (
        str(data),
        args.size,
        list(seeds),
    ):
        for name, rec in previous["rows"].items():
            if records.get(name, {}).get("summary") is None:
                records[name] = rec
        outputs = {**previous["tables"], **outputs}
    # Every row against the full pipeline, on the same test subjects (cheap: bootstraps).
    full = records.get(FULL_ROW, {})
    for name, rec in records.items():
        if name != FULL_ROW and rec.get("run_dir") and full.get("run_dir"):
            try:
                rec["vs_full"] = compare_runs(rec["run_dir"], full["run_dir"])
            except ValueError as err:  # e.g. a segmenter that found no bones in some subject
                print(f"{name}: not paired with {FULL_ROW} ({err})", flush=True)
                continue
            print(f"{name} - {FULL_ROW}: Δ AUC {delta_cell(rec['vs_full'], 3)}", flush=True)

    for table, output in outputs.items():
        spec = TABLES[table]
        rows = [records[name] for name in spec["rows"]]
        output["markdown"] = format_table(spec["title"], spec["columns"], rows)
    header = (
        f"# The paper's tables on {data} (size {args.size}, seeds {list(seeds)})\n\n{note}\n\n"
        f"{helpers.ceilings_table(ceilings)}\n"
        "Ours: mean ± std over the seeds of the test subjects' positive-class F1, AUC and "
        "accuracy, with the clinical baseline and the Bayes image posterior on the same test "
        "subjects. Paper: its reported means (– where it reports none).\n"
    )
    blocks = [
        outputs[t]["markdown"]
        + f"\nwall time of the rows first run with this table: {outputs[t]['wall_s']:.0f} s\n"
        for t in TABLES
        if t in outputs
    ]
    markdown = (
        header
        + "\n"
        + "\n".join(blocks)
        + f"\nwall time of this run (tables {', '.join(tables)}): {wall:.0f} s\n"
    )
    print("\n" + markdown, flush=True)
    (out / "paper_tables.md").write_text(markdown)
    json_path.write_text(
        json.dumps(
            {
                "synthetic": True,
                "note": note,
                "size": args.size,
                "data": str(data),
                "seeds": list(seeds),
                "ceilings": ceilings,
                "ci_method": CI_METHOD,
                "paired_method": PAIRED_METHOD,
                "tables": outputs,
                "rows": records,
                "wall_s": wall,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {out / 'paper_tables.md'} and {json_path}")


if __name__ == "__main__":
    main()
