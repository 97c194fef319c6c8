"""Shared fixtures. Rendering is the slow part, so rendered subjects are session-scoped."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from osteo_jax.config import PhysicsConfig, SynthConfig
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests never write jax's compilation cache to ~ (the CLI's default); subprocesses inherit it.
os.environ["OSTEO_JAX_COMPILE_CACHE"] = "off"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def paper_cfg():
    return SynthConfig()


@pytest.fixture(scope="session")
def paper_cohort(paper_cfg):
    return sample_cohort(paper_cfg.cohort, seed=paper_cfg.seed)


@pytest.fixture(scope="session")
def noiseless_cfg():
    return SynthConfig(physics=PhysicsConfig(noise=False))


@pytest.fixture(scope="session")
def noiseless_renders(paper_cohort, noiseless_cfg):
    """Four noiseless 1024 px renders (both hands among them)."""
    return [render_subject(paper_cohort, i, noiseless_cfg) for i in range(4)]


@pytest.fixture(scope="session")
def small_cfg():
    """256 px renders (0.8 mm) for cohort-level label statistics."""
    return dataclasses.replace(SynthConfig(), physics=PhysicsConfig(size=256))


@pytest.fixture(scope="session")
def small_renders(paper_cohort, small_cfg):
    return [render_subject(paper_cohort, i, small_cfg) for i in range(16)]


@pytest.fixture(scope="session")
def cohort_images():
    """200 subjects (30 % positive) with 1-4 images each, in a shuffled image order."""
    rng = np.random.default_rng(3)
    n_subjects = 200
    subject_label = (rng.random(n_subjects) < 0.3).astype(np.int64)
    counts = rng.integers(1, 5, n_subjects)
    subjects = np.repeat(np.array([f"S{i:03d}" for i in range(n_subjects)]), counts)
    labels = np.repeat(subject_label, counts)
    perm = rng.permutation(len(subjects))
    return subjects[perm], labels[perm]


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """``(out, result)`` of test_experiment.TINY run once per session (do not modify ``out``)."""
    from test_experiment import TINY

    from osteo_jax.pipeline.experiment import run_experiment

    out = tmp_path_factory.mktemp("exp") / "run"
    return out, run_experiment(TINY, out, workers=1, progress=False)
