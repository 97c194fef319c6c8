"""The synthetic hand-radiograph cohort: sample subjects, render radiographs, write a dataset.

No public set of hand radiographs with DXA labels exists, so osteo_jax generates its default
data from physics (``DATA_PHYSICS.md``): a cohort sampler ties every bone's geometry to one
hand-level bone-health latent correlated ``r`` with the latent T-score
(:mod:`~osteo_jax.data.synth.cohort`); a parametric hand
(:mod:`~osteo_jax.data.synth.phantom`) is rasterised into path lengths and label maps
(:mod:`~osteo_jax.data.synth.raster`) and projected by Beer-Lambert with a detector model
(:mod:`~osteo_jax.data.synth.xray`).

Synthetic data, for method development only: nothing here supports a clinical claim.

Typical use::

    cfg = SynthConfig()
    cohort = sample_cohort(cfg.cohort, seed=cfg.seed)
    rad = render_subject(cohort, 0, cfg)          # image, exact map, annotator maps
    write_dataset(cfg, "data/paper")              # the documented dataset folder
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from osteo_jax.config import BONE_NAMES, CLASS_NAMES, SynthConfig
from osteo_jax.data.folder import (
    EXACT,
    FORMAT_VERSION,
    IMAGES_CSV,
    SUBJECTS_CSV,
    annotator_name,
    image_relpath,
    mask_relpath,
    rows_from,
    write_csv,
    write_json,
    write_labels,
    write_png16,
)
from osteo_jax.data.outdir import (
    OutputFolderError,
    check_dir,
    claim_dir,
    publish_partial,
    remove_stale_partials,
    writing,
)
from osteo_jax.data.synth.ceiling import write_ceilings
from osteo_jax.data.synth.cohort import Cohort, category_names, sample_cohort
from osteo_jax.data.synth.phantom import Scene, build_scene
from osteo_jax.data.synth.raster import AnnotatorDraw, Raster, rasterize
from osteo_jax.data.synth.xray import expose, transmission
from osteo_jax.data.workers import init_child

__all__ = [
    "Cohort",
    "Radiograph",
    "annotator_draws",
    "render_subject",
    "sample_cohort",
    "write_dataset",
]

# Annotator offsets and jitter are given in pixels of the 1024 px / 0.2 mm reference render.
_REF_SPACING_MM = 0.2


@dataclasses.dataclass(frozen=True)
class BoneAxis:
    """Where a labelled bone lies in the image, in (row, col) pixel coordinates.

    Attributes:
      p0: proximal end of the axis.
      p1: distal end of the axis.
      normal: unit vector across the shaft, pointing to the radial (thumb) side.
      measure: the mid-diaphysis point where the drawn cortical geometry holds exactly.
    """

    p0: np.ndarray
    p1: np.ndarray
    normal: np.ndarray
    measure: np.ndarray


@dataclasses.dataclass(frozen=True)
class Radiograph:
    """One rendered subject.

    Attributes:
      image: ``[H, W]`` uint16 12-bit radiograph (MONOCHROME2: bone bright).
      exact: ``[H, W]`` uint8 exact label map (0 background, 1 radius, 2 ulna, 3-7 MC1-MC5).
      annotators: ``[M, H, W]`` uint8 annotator label maps.
      annotations: the M annotators' draws (bias, jitter, convention).
      axes: per bone name, a :class:`BoneAxis`.
      pixel_spacing_mm: detector pixel spacing.
      raster: path-length maps and the ambiguity region (the renderer's ground truth).
    """

    image: np.ndarray
    exact: np.ndarray
    annotators: np.ndarray
    annotations: tuple[AnnotatorDraw, ...]
    axes: dict[str, BoneAxis]
    pixel_spacing_mm: float
    raster: Raster


def annotator_draws(cfg: SynthConfig, rng: np.random.Generator) -> tuple[AnnotatorDraw, ...]:
    """Draws each annotator's bias, jitter amplitude and convention for one image."""
    ref = _REF_SPACING_MM
    lo, hi = cfg.annotators.jitter_px
    return tuple(
        AnnotatorDraw(
            bias_mm=bias * ref,
            jitter_mm=float(rng.uniform(lo, hi)) * ref,
            short=bool(rng.random() < p),
            cut_frac=float(rng.uniform(0.85, 1.05)),
            seed=int(rng.integers(2**31)),
        )
        for bias, p in zip(cfg.annotators.biases(), cfg.annotators.propensities(), strict=True)
    )


def _axes(scene: Scene, size: int, spacing: float) -> dict[str, BoneAxis]:
    def rc(p):  # mm (x right, y up) -> (row, col) of pixel centres
        return np.array([size / 2 - p[1] / spacing - 0.5, p[0] / spacing + size / 2 - 0.5])

    out = {}
    for b in scene.bones:
        if b.label == 0:
            continue
        out[BONE_NAMES[b.label - 1]] = BoneAxis(
            p0=rc(b.p0),
            p1=rc(b.p0 + b.length * b.u),
            normal=np.array([-b.n[1], b.n[0]]),
            measure=rc(b.p0 + b.measure_s * b.u),
        )
    return out


def render_subject(cohort: Cohort, i: int, cfg: SynthConfig = SynthConfig()) -> Radiograph:
    """Renders subject ``i`` of a cohort: radiograph, exact labels and annotator masks.

    Deterministic in ``(cfg.seed, i)``: the same subject renders identically whatever order or
    process it is rendered in.

    Args:
      cohort: from :func:`sample_cohort`.
      i: subject index.
      cfg: generator configuration (``cfg.physics.size`` pixels over ``cfg.physics.fov_mm``).

    Returns:
      A :class:`Radiograph`.
    """
    if not 0 <= i < len(cohort):
        raise IndexError(f"subject index {i} out of range for a cohort of {len(cohort)}")
    phys = cfg.physics
    if phys.size < 32:
        raise ValueError(f"image size must be at least 32 px, got {phys.size}")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, 0xA7]))
    scene = build_scene(cohort, i)
    draws = annotator_draws(cfg, rng)
    raster = rasterize(
        scene,
        size=phys.size,
        spacing=phys.pixel_spacing_mm,
        annotators=draws,
        rng=rng,
        tex_seed=cfg.seed,
    )
    trans = transmission(raster.bone, raster.soft, raster.adipose, phys)
    image = expose(trans, phys, rng)
    return Radiograph(
        image=image,
        exact=raster.exact,
        annotators=raster.annotators,
        annotations=draws,
        axes=_axes(scene, phys.size, phys.pixel_spacing_mm),
        pixel_spacing_mm=phys.pixel_spacing_mm,
        raster=raster,
    )


# --------------------------------------------------------------------------- dataset writer

_WORKER: dict = {}
# image_format -> (file extension, DICOM photometric interpretation or None for PNG)
IMAGE_FORMATS = {
    "png": ("png", None),
    "dicom": ("dcm", "MONOCHROME2"),
    "dicom-mono1": ("dcm", "MONOCHROME1"),
}


def _image_path(image_id: str, image_format: str) -> str:
    ext = IMAGE_FORMATS[image_format][0]
    return image_relpath(image_id)[: -len(".png")] + f".{ext}"


def _init_worker(cohort: Cohort, cfg: SynthConfig, tmp: str, image_format: str = "png") -> None:
    _WORKER.update(cohort=cohort, cfg=cfg, tmp=Path(tmp), image_format=image_format)


def _render_and_write(i: int) -> tuple[list[dict], list[dict]]:
    """Renders subject i, writes its PNGs, returns its bones.csv and annotations.csv rows."""
    cohort, cfg, tmp = _WORKER["cohort"], _WORKER["cfg"], _WORKER["tmp"]
    rad = render_subject(cohort, i, cfg)
    sid = str(cohort.subject_id[i])
    fmt = _WORKER["image_format"]
    photometric = IMAGE_FORMATS[fmt][1]
    if photometric is None:
        write_png16(tmp / image_relpath(sid), rad.image, bits_stored=cfg.physics.bits_stored)
    else:
        from osteo_jax.data.dicom import write_dicom

        write_dicom(
            tmp / _image_path(sid, fmt),
            rad.image,
            photometric=photometric,
            bits_stored=cfg.physics.bits_stored,
            pixel_spacing_mm=cfg.physics.pixel_spacing_mm,
            laterality=str(cohort.laterality[i]),
            identifier=sid,
        )
    write_labels(tmp / mask_relpath(EXACT, sid), rad.exact)
    for m in range(rad.annotators.shape[0]):
        write_labels(tmp / mask_relpath(annotator_name(m), sid), rad.annotators[m])
    bones = []
    for j, name in enumerate(BONE_NAMES):
        ax = rad.axes[name]
        bones.append(
            dict(
                subject_id=sid,
                bone=name,
                length_mm=round(float(cohort.length[i, j]), 4),
                width_mm=round(float(cohort.width[i, j]), 4),
                medullary_mm=round(float(cohort.medullary[i, j]), 4),
                cortical_thickness_mm=round(float(cohort.cortical_thickness[i, j]), 4),
                wall_radial_mm=round(float(cohort.wall_radial[i, j]), 4),
                wall_ulnar_mm=round(float(cohort.wall_ulnar[i, j]), 4),
                cortical_index=round(float(cohort.ci[i, j]), 5),
                porosity=round(float(cohort.porosity[i, j]), 5),
                bvtv=round(float(cohort.bvtv[i, j]), 5),
                axis_p0_row=round(float(ax.p0[0]), 2),
                axis_p0_col=round(float(ax.p0[1]), 2),
                axis_p1_row=round(float(ax.p1[0]), 2),
                axis_p1_col=round(float(ax.p1[1]), 2),
                measure_row=round(float(ax.measure[0]), 2),
                measure_col=round(float(ax.measure[1]), 2),
                normal_row=round(float(ax.normal[0]), 5),
                normal_col=round(float(ax.normal[1]), 5),
            )
        )
    ref = _REF_SPACING_MM
    anns = [
        dict(
            subject_id=sid,
            annotator=annotator_name(m),
            convention="short" if a.short else "full",
            bias_px=round(a.bias_mm / ref, 3),
            jitter_px=round(a.jitter_mm / ref, 3),
        )
        for m, a in enumerate(rad.annotations)
    ]
    return bones, anns


def write_dataset(
    cfg: SynthConfig,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    image_format: str = "png",
) -> Path:
    """Generates a cohort and writes it as a dataset folder (see :mod:`osteo_jax.data.folder`).

    Everything is written to a temporary folder inside ``out`` (:func:`~osteo_jax.data.outdir.
    partial_dir`) and moved into place only when complete, ``dataset.json`` last, so a failure
    or interruption never leaves a half-written dataset; the next call removes a killed run's
    temporary folder, and render workers exit with their parent.

    Args:
      cfg: generator configuration; ``cfg.seed`` determines every file.
      out: destination folder: absent, empty, or an unfinished ``synth`` output (see
        :mod:`osteo_jax.data.outdir`), unless ``overwrite``.
      workers: processes rendering in parallel (default: all cores); output does not depend on
        it. Workers are spawned, so a script calling this with ``workers > 1`` needs the usual
        ``if __name__ == "__main__":`` guard (notebooks do not).
      overwrite: replace the dataset files of an existing ``out`` (other files stay).
      progress: show a progress bar.
      image_format: ``"png"`` (16-bit MONOCHROME2 PNG), ``"dicom"`` (uncompressed DICOM,
        MONOCHROME2) or ``"dicom-mono1"`` (MONOCHROME1: stored inverted, displayed the same).

    Returns:
      The dataset folder.

    Raises:
      OutputFolderError: ``out`` holds other files or (without ``overwrite``) a dataset.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"image_format must be one of {tuple(IMAGE_FORMATS)}, got {image_format!r}"
        )
    if cfg.physics.size < 32:
        raise ValueError(f"image size must be at least 32 px, got {cfg.physics.size}")
    check_dir(out, "synth", overwrite=overwrite)
    cohort = sample_cohort(cfg.cohort, seed=cfg.seed)
    claim = claim_dir(out, "synth", overwrite=overwrite)
    out = claim.path
    remove_stale_partials(out)
    if (out / "dataset.json").exists():
        raise OutputFolderError(
            f"{out}: holds a finished synthetic dataset; pass --overwrite to replace it"
        )
    n = len(cohort)
    with writing(claim) as tmp:
        (tmp / "images").mkdir()
        names = [EXACT] + [annotator_name(m) for m in range(cfg.annotators.n_annotators)]
        for name in names:
            (tmp / "masks" / name).mkdir(parents=True)
        workers = max(1, min(workers or os.cpu_count() or 1, n))
        bar = tqdm(total=n, desc="render", unit="subj", disable=not progress)
        if workers == 1:
            _init_worker(cohort, cfg, str(tmp), image_format)
            results = []
            for i in range(n):
                results.append(_render_and_write(i))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers,
                mp_context=ctx,
                initializer=init_child,
                initargs=(os.getpid(), _init_worker, cohort, cfg, str(tmp), image_format),
            ) as pool:
                results = []
                for res in pool.map(_render_and_write, range(n), chunksize=4):
                    results.append(res)
                    bar.update()
        bar.close()
        _write_tables(tmp, cohort, cfg, results, image_format)
        publish_partial(tmp, out, last=("oracle.json", "dataset.json"))
    return out


def _write_tables(
    tmp: Path, cohort: Cohort, cfg: SynthConfig, results, image_format: str = "png"
) -> None:
    sp = cfg.physics.pixel_spacing_mm
    ids = [str(s) for s in cohort.subject_id]
    write_csv(
        tmp / SUBJECTS_CSV,
        rows_from(
            dict(
                subject_id=ids,
                age=[float(a) for a in cohort.age],
                sex=list(cohort.sex),
                t_score=[round(float(t), 4) for t in cohort.t_score],
                who_category=list(category_names(cohort.who)),
                label=[int(v) for v in cohort.label],
                image_path=[_image_path(s, image_format) for s in ids],
                pixel_spacing_mm=[sp] * len(ids),
                laterality=list(cohort.laterality),
                hand_latent=[round(float(h), 5) for h in cohort.hand_latent],
                thinning=["narrow_w" if v else "endosteal" for v in cohort.narrow_w],
            )
        ),
    )
    write_csv(
        tmp / IMAGES_CSV,
        rows_from(
            dict(
                image_id=ids,
                subject_id=ids,
                path=[_image_path(s, image_format) for s in ids],
                laterality=list(cohort.laterality),
                pixel_spacing_mm=[sp] * len(ids),
            )
        ),
    )
    write_csv(tmp / "bones.csv", [row for bones, _ in results for row in bones])
    write_csv(tmp / "annotations.csv", [row for _, anns in results for row in anns])
    write_ceilings(tmp, cohort, cfg.cohort)
    write_json(
        tmp / "dataset.json",
        dict(
            format_version=FORMAT_VERSION,
            classes=list(CLASS_NAMES),
            annotators=[EXACT] + [annotator_name(m) for m in range(cfg.annotators.n_annotators)],
            image_size=cfg.physics.size,
            pixel_spacing_mm=sp,
            photometric=IMAGE_FORMATS[image_format][1] or "MONOCHROME2",
            image_format=image_format,
            bits_stored=cfg.physics.bits_stored,
            # The name every dataset.json has recorded since format 1 (not an import path).
            generator=dict(name="osteo_jax.data.synth", config=dataclasses.asdict(cfg)),
            synthetic=True,
            disclaimer="Synthetic radiographs for method development; no clinical use.",
        ),
    )
