"""The grain input pipeline: records match the in-memory loader, batches are seeded."""

import pickle

import numpy as np
import pytest

from osteo_jax.config import CohortConfig, PhysicsConfig, SynthConfig
from osteo_jax.data.pipeline import RandomFlip, load_seg_arrays, make_loader
from osteo_jax.data.sources import FolderSource, TfdsSource
from osteo_jax.data.synth.synthetic import write_dataset

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=6), physics=PhysicsConfig(size=64))
    return write_dataset(cfg, tmp_path_factory.mktemp("pipe") / "ds", workers=1, progress=False)


@pytest.fixture(scope="module")
def source(folder):
    return FolderSource(folder, SIZE)


def _batches(src, **kw):
    kw = dict(batch_size=2, seed=0) | kw
    return list(make_loader(src, **kw))


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_records_match_inmemory(folder, source):
    ref = load_seg_arrays(folder, SIZE, workers=1)
    assert len(source) == len(ref)
    assert source.annotators == ref.annotators
    for i in range(len(source)):
        r = source[i]
        assert r["image"].dtype == np.float32 and r["image"].shape == (SIZE, SIZE, 1)
        assert r["masks"].dtype == np.uint8
        assert r["masks"].shape == (len(ref.annotators), SIZE, SIZE)
        assert r["image_id"] == ref.image_ids[i] and r["subject_id"] == ref.subject_ids[i]
        np.testing.assert_array_equal(r["image"], ref.images[i])
        np.testing.assert_array_equal(r["masks"], ref.masks[i])


def test_source_pickles(source):
    back = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(back[1]["image"], source[1]["image"])
    assert len(pickle.dumps(source)) < 10_000  # paths and ids only


def test_seeded_and_worker_independent(source):
    a = _batches(source, seed=3)
    assert len(a) == len(source) // 2
    assert a[0]["image"].shape == (2, SIZE, SIZE, 1)
    _assert_same(a, _batches(source, seed=3))
    _assert_same(a, _batches(source, seed=3, workers=2))
    order = np.concatenate([b["image_id"] for b in a])
    other = np.concatenate([b["image_id"] for b in _batches(source, seed=4)])
    assert sorted(order) == sorted(other) == sorted(source.image_ids)
    assert not np.array_equal(order, other)


def test_flip_is_exact_mirror(source):
    by_id = {source[i]["image_id"]: source[i] for i in range(len(source))}
    flipped = kept = 0
    for seed in range(3):
        for b in _batches(source, seed=seed, num_epochs=2):
            for j, iid in enumerate(b["image_id"]):
                ref = by_id[str(iid)]
                if np.array_equal(b["image"][j], ref["image"]):
                    np.testing.assert_array_equal(b["masks"][j], ref["masks"])
                    kept += 1
                else:
                    np.testing.assert_array_equal(b["image"][j], ref["image"][:, ::-1])
                    np.testing.assert_array_equal(b["masks"][j], ref["masks"][:, :, ::-1])
                    flipped += 1
    assert flipped > 0 and kept > 0
    rec = source[0]
    assert RandomFlip(p=0.0)(rec, np.random.default_rng(0)) is rec


def test_no_augment_no_shuffle_is_source_order(source):
    b = _batches(source, shuffle=False, augment=False, batch_size=len(source))
    assert len(b) == 1
    np.testing.assert_array_equal(b[0]["image_id"], source.image_ids)


def test_indices_and_remainder(source):
    idx = [4, 1, 3]
    got = _batches(source, indices=idx, drop_remainder=False)
    ids = np.concatenate([b["image_id"] for b in got])
    assert sorted(ids) == sorted(source.image_ids[idx])
    assert [len(b["image_id"]) for b in got] == [2, 1]
    assert len(_batches(source, indices=idx)) == 1
    with pytest.raises(IndexError):
        make_loader(source, batch_size=1, seed=0, indices=[len(source)])


def test_tfds_source_matches_folder(folder, source, tmp_path):
    from osteo_jax.data.tfds_dataset import build_tfds

    tsrc = TfdsSource(build_tfds(folder, tmp_path / "tfds"), SIZE)
    assert len(tsrc) == len(source) and tsrc.annotators == source.annotators
    back = pickle.loads(pickle.dumps(tsrc))
    for i in (0, len(source) - 1):
        a, b = source[i], back[i]
        assert a["image_id"] == b["image_id"] and a["subject_id"] == b["subject_id"]
        # The folder source decodes through read_image (values / 65535), the TFDS source from
        # the stored uint16: the same image up to float rounding.
        np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)
        np.testing.assert_array_equal(a["masks"], b["masks"])


def test_start_batch_continues_the_same_stream(source):
    full = _batches(source, num_epochs=3)
    _assert_same(_batches(source, num_epochs=3, start_batch=4), full[4:])
    with pytest.raises(ValueError, match="start_batch"):
        make_loader(source, batch_size=2, seed=0, start_batch=len(full) + 1)


def test_tfds_source_ids_match_folder(folder, source, tmp_path):
    from osteo_jax.data.pipeline import seg_source
    from osteo_jax.data.tfds_dataset import build_tfds

    tsrc = seg_source(build_tfds(folder, tmp_path / "tfds"), SIZE)
    assert isinstance(tsrc, TfdsSource)
    np.testing.assert_array_equal(tsrc.image_ids, source.image_ids)
    np.testing.assert_array_equal(tsrc.subject_ids, source.subject_ids)
    tsrc = seg_source(tmp_path / "tfds", SIZE)  # the build_tfds out_dir works too
    assert len(tsrc) == len(source)


def test_train_seg_same_params_from_memory_stream_workers_and_tfds(folder, tmp_path):
    """The segmenter loop reads a folder decoded up front, streamed by 2 grain workers, or a
    TFDS build, and trains to the same parameters (TFDS: up to the uint16 float rounding)."""
    import jax

    from osteo_jax.config import OTConfig, SegConfig, SegTrainConfig
    from osteo_jax.data.tfds_dataset import build_tfds
    from osteo_jax.train.seg_loop import train_segmenter

    cfg = SegTrainConfig(
        model=SegConfig(
            features=(4, 8),
            num_experts=2,
            num_samples=1,
            latent_dim=2,
            head_hidden=4,
            router_hidden=8,
            image_size=SIZE,
        ),
        ot=OTConfig(num_iters=20),
        batch_size=2,
        epochs=2,
        warmup_steps=1,
        val_fraction=0.34,
        max_steps=2,
    )
    runs = {
        "memory": dict(data=folder),
        "stream2": dict(data=folder, stream=True, workers=2),
        "tfds": dict(data=build_tfds(folder, tmp_path / "tfds_build")),
    }
    params = {}
    for name, kw in runs.items():
        out = train_segmenter(run_dir=tmp_path / name, cfg=cfg, progress=False, **kw)
        assert out["steps"] == 2
        params[name] = jax.device_get(out["state"].params)
    same = jax.tree.map(np.array_equal, params["memory"], params["stream2"])
    assert all(jax.tree.leaves(same))
    close = jax.tree.map(
        lambda a, b: np.allclose(a, b, atol=1e-5), params["memory"], params["tfds"]
    )
    assert all(jax.tree.leaves(close))
