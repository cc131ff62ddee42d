"""The data pipeline against timm fixtures, the samplers' coverage, and bad input."""
import json
import os

import numpy as np
import paddle
import pytest
from PIL import Image

from deit.data.datasets import ImageNetDataset
from deit.data.mixup import Mixup, from_plsc
from deit.data.rand_augment import LEVEL_TO_ARG, SIGNED, RandAugment, apply_op
from deit.data.sampler import ResumableBatchSampler, ShardedEvalSampler
from deit.data.transforms import RandCropImage, RandomErasing, TimmAutoAugment
from deit.errors import DataError
from tests.scripted_rng import ScriptedRNG
from tests.conftest import ROOT

FIX = np.load(os.path.join(ROOT, "tests", "fixtures", "timm_data.npz"))


def test_random_resized_crop_params_equal_timm_for_the_same_draws():
    crop = RandCropImage(224)
    cases = json.loads(str(FIX["rrc"]))
    assert any(c["params"][2:] == [350, 350] or c["params"][0] == 0 for c in cases)  # fallback covered
    for case in cases:
        assert list(crop.get_params(400, 350, ScriptedRNG(case["script"]))) == case["params"]


def test_random_erasing_statistics_match_timm():
    erase = RandomErasing()
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(20000):
        out = erase(np.zeros((56, 48, 3), np.float32), rng)
        fractions.append(float((out[..., 0] != 0).mean()))
    fractions = np.array(fractions)
    erased = fractions[fractions > 0]
    assert np.mean(fractions > 0) == pytest.approx(float(FIX["erase_rate"]), abs=0.015)
    assert erased.mean() == pytest.approx(float(FIX["erase_area_mean"]), abs=0.006)
    np.testing.assert_allclose(np.quantile(erased, [0.1, 0.5, 0.9]), FIX["erase_area_quantiles"], atol=0.01)


def test_rand_augment_op_list_and_magnitude_noise_equal_timm():
    ra = RandAugment.from_config("rand-m9-mstd0.5-inc1")
    assert ra.ops == json.loads(str(FIX["ra_ops"]))
    assert ra.magnitude == 9 and ra.magnitude_std == float(FIX["ra_magnitude_std"]) and ra.num_layers == 2
    assert RandAugment.from_config("rand-m7-n3-mstd101").magnitude_std == float("inf")


def test_rand_augment_level_to_argument_equals_timm():
    table = json.loads(str(FIX["ra_levels"]))
    for key, expected in table.items():
        name, magnitude, negate = key.split("|")
        fn = LEVEL_TO_ARG[name]
        ours = list(fn(float(magnitude), negate == "True" and name in SIGNED)) if fn else []
        assert ours == pytest.approx(expected), key


def test_rand_augment_ops_produce_timm_pixels():
    image = Image.fromarray(FIX["ra_image"])
    table = json.loads(str(FIX["ra_levels"]))
    names = {k.split("|")[0] for k in table}
    for name in names:
        for negate in (False, True):
            args = table[f"{name}|9.0|{negate}"]
            out = apply_op(name, image, tuple(args), (124, 116, 104), Image.BICUBIC)
            np.testing.assert_array_equal(np.asarray(out), FIX[f"ra_out/{name}/{negate}"], err_msg=name)


def test_timm_auto_augment_op_uses_mean_fill_and_is_seeded():
    op = TimmAutoAugment("rand-m9-mstd0.5-inc1", img_size=32, mean=[0.485, 0.456, 0.406])
    assert op.rand_augment.fill == (124, 116, 104)
    img = Image.fromarray(FIX["ra_image"])
    a = op(img, np.random.default_rng([1, 2, 3]))
    b = op(img, np.random.default_rng([1, 2, 3]))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_mixup_and_cutmix_equal_timm_batch_mode():
    for case in json.loads(str(FIX["mixup"])):
        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5,
                    label_smoothing=0.1, num_classes=5)
        x = paddle.to_tensor(np.array(case["x"], np.float32))
        y = paddle.to_tensor(np.array(case["y"], np.int64))
        mixed, target = mix(x, y, ScriptedRNG(case["script"], beta=case["beta"]))
        np.testing.assert_allclose(mixed.numpy(), np.array(case["mixed"]), atol=1e-6)
        np.testing.assert_allclose(target.numpy(), np.array(case["target"]), atol=1e-6)
        np.testing.assert_allclose(target.numpy().sum(1), 1.0, atol=1e-6)


def test_plsc_transform_op_sampler_maps_to_timm_parameters():
    m = from_plsc({"Mixup": {"alpha": 0.8, "prob": 0.5, "epsilon": 0.1, "class_num": 1000},
                   "Cutmix": {"alpha": 1.0, "prob": 0.5, "epsilon": 0.1, "class_num": 1000}}, 10)
    assert (m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob, m.label_smoothing, m.num_classes) == \
        (0.8, 1.0, 1.0, 0.5, 0.1, 1000)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_repeated_aug_sampler_matches_deit_rasampler_coverage(world):
    n, bs = 600, 8
    per_rank = []
    for rank in range(world):
        s = ResumableBatchSampler(n, bs, shuffle=True, drop_last=False, seed=5, rank=rank,
                                  world_size=world, repeats=3)
        s.set_epoch(2)
        per_rank.append([i for batch in s for i, *_ in batch])
    assert all(len(r) == n // 256 * 256 // world for r in per_rank)  # DeiT's epoch length
    counts = np.bincount(np.concatenate(per_rank), minlength=n)
    assert counts.max() <= 3  # each index at most its 3 repeats
    if world == 3:  # the 3 repeats of an index land on the 3 different ranks
        assert all(len(set(r)) == len(r) for r in per_rank)
    else:
        assert max(np.bincount(per_rank[0])) > 1  # repeats within a rank when world < 3


def test_plain_sampler_visits_every_index_once_per_epoch_and_order_depends_on_seed_and_epoch():
    s = ResumableBatchSampler(103, 10, shuffle=True, seed=1)
    s.set_epoch(1)
    first = [i for b in s for i, *_ in b]
    assert sorted(first) == list(range(103))
    s.set_epoch(2)
    assert [i for b in s for i, *_ in b] != first
    again = ResumableBatchSampler(103, 10, shuffle=True, seed=1)
    again.set_epoch(1)
    assert [i for b in again for i, *_ in b] == first


@pytest.mark.parametrize("repeats", [1, 3])
def test_skipping_k_batches_gives_the_same_remaining_batches(repeats):
    s = ResumableBatchSampler(700, 16, shuffle=True, seed=3, repeats=repeats, world_size=2, rank=1)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_batch=5)
    assert list(s) == full[5:]


@pytest.mark.parametrize("n, world", [(10, 3), (1000, 8), (7, 8)])
def test_eval_sampler_covers_every_image_exactly_once(n, world):
    seen = [i for r in range(world) for b in ShardedEvalSampler(n, 4, r, world) for i, _ in b]
    assert sorted(seen) == list(range(n))


def _write_dataset(tmp_path, n=10, bad=()):
    lines = []
    for i in range(n):
        path = tmp_path / f"img{i}.jpg"
        if i in bad:
            path.write_bytes(b"\xff\xd8 this is not a jpeg")
        else:
            Image.new("RGB", (12, 12), (i * 20, 0, 0)).save(path)
        lines.append(f"img{i}.jpg {i % 2}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return str(tmp_path), str(tmp_path / "list.txt")


def test_corrupt_image_is_replaced_logged_once_and_counted(tmp_path, capsys):
    root, listing = _write_dataset(tmp_path, bad={3})
    ds = ImageNetDataset(root, listing, max_bad_fraction=0.5)
    img, _ = ds[3]
    assert img.size == (12, 12)
    ds[(3, 2)]
    assert capsys.readouterr().out.count("warning: skipping unreadable image") == 1
    assert ds.bad_count == 1


def test_too_many_bad_images_stop_with_a_clear_error(tmp_path):
    root, listing = _write_dataset(tmp_path, bad={1, 2, 3})
    ds = ImageNetDataset(root, listing, max_bad_fraction=0.1)
    with pytest.raises(DataError, match=r"unreadable images .* fix the dataset"):
        for i in range(10):
            ds[i]


def test_list_file_errors_name_file_and_line(tmp_path):
    root, listing = _write_dataset(tmp_path)
    with open(listing, "a") as f:
        f.write("missing.jpg 1\n")
    with pytest.raises(DataError, match=r"list.txt:11: image .*missing.jpg does not exist"):
        ImageNetDataset(root, listing)


def test_plsc_train_and_eval_transforms_build_and_are_deterministic():
    from deit.build.schema import SCHEMA
    from deit.data.transforms import build_transforms
    from engine.config import load_config
    # read as run.py reads it: the config reader turns PLSC's `1.0/255.0` into a number
    cfg = load_config(os.path.join(ROOT, "configs", "plsc", "DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml"),
                      [], SCHEMA)
    train = build_transforms(cfg["DataLoader"]["Train"]["dataset"]["transform_ops"])
    evaluate = build_transforms(cfg["DataLoader"]["Eval"]["dataset"]["transform_ops"])
    img = Image.fromarray((np.random.default_rng(0).random((350, 400, 3)) * 255).astype(np.uint8))
    a = train(img, np.random.default_rng([42, 1, 7]))
    b = train(img, np.random.default_rng([42, 1, 7]))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32 and np.array_equal(a, b)
    e = evaluate(img, None)
    assert e.shape == (3, 224, 224)
    # eval: short side to 256 (= 224 / 0.875) bicubic, centre crop 224, normalize
    ref = img.resize((292, 256), Image.BICUBIC).crop((34, 16, 258, 240))
    ref = (np.asarray(ref, np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(e, ref.transpose(2, 0, 1), atol=1e-5)


# Paddle's loader thread also re-raises the worker's DataError before our Loader reports it
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_corrupt_files_in_worker_processes_stop_the_run_cleanly(tiny_config, tiny_dataset, tmp_path, capsys):
    import shutil
    import run
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    listing = (data / "train_list.txt").read_text().splitlines()
    for line in listing[:10]:
        (data / line.split()[0]).write_bytes(b"garbage")
    code = run.main(["-c", tiny_config, "-o", f"DataLoader.Train.dataset.image_root={data}",
                     "-o", f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
                     "-o", "DataLoader.Train.loader.num_workers=2",
                     "-o", "DataLoader.Train.dataset.max_bad_fraction=0.02"])
    assert code == 2
    assert "unreadable images" in capsys.readouterr().err


def test_posterize_to_zero_bits_is_black_as_older_pillow_made_it():
    img = Image.fromarray(FIX["ra_image"])
    args = LEVEL_TO_ARG["PosterizeIncreasing"](10.0, False)
    assert args == (0,)
    out = np.asarray(apply_op("PosterizeIncreasing", img, args, (0, 0, 0), Image.BICUBIC))
    assert out.shape == FIX["ra_image"].shape and not out.any()


def test_fused_channels_first_normalize_and_erasing_equal_the_hwc_path():
    from deit.data.transforms import NormalizeImage, ToCHWImage, build_transforms
    ops = [{"NormalizeImage": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
           {"RandomErasing": {"EPSILON": 1.0}}, {"ToCHWImage": {}}]
    fused = build_transforms(ops)
    assert fused.ops[0].channels_first and fused.ops[2].already_chw
    img = Image.fromarray(FIX["ra_image"])
    out = fused(img, np.random.default_rng(3))
    hwc = NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(img, None)
    ref = ToCHWImage()(hwc, None)
    erased = ~np.isclose(out, ref)
    assert erased.any()  # the box is there, and everything outside it is the plain normalize
    np.testing.assert_allclose(out[~erased], ref[~erased], rtol=1e-6)
    expected = (np.asarray(img, np.float64) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(ref, expected.transpose(2, 0, 1), atol=1e-5)


def _epoch_keys(n, batch, world, epoch=3, repeats=1, drop_last=True, cuts=()):
    """The samples every rank trains in `epoch`, as a Counter, when the run is cut after
    the global steps in `cuts` (each a (step, next world size)) and resumed there."""
    from collections import Counter
    seen, position, start, size = Counter(), None, 0, world
    stops = list(cuts) + [(None, None)]
    for stop, next_size in stops:
        samplers = [ResumableBatchSampler(n, batch, shuffle=True, drop_last=drop_last, seed=5, rank=r,
                                          world_size=size, repeats=repeats) for r in range(size)]
        for s in samplers:
            if position is not None:
                s.resume_at(position)
            s.set_epoch(epoch, start_batch=start)
        lengths = {len(s) for s in samplers}
        assert len(lengths) == 1, "ranks must take the same number of steps"
        end = lengths.pop() if stop is None else stop
        for b in range(start, end):
            batches = [s.batch_keys(b) for s in samplers]  # (index, epoch[, copy]): copies stay apart
            assert all(batches), "every rank gets samples at every step"
            for keys in batches:
                seen.update(keys)
        if stop is not None:
            position, start, size = samplers[0].position(stop), stop, next_size
            assert all(s.position(stop) == position for s in samplers)
    return seen


@pytest.mark.parametrize("n, batch, world, cuts, repeats, drop_last", [
    (120, 16, 2, [(2, 1)], 1, True),            # 2 processes cut mid-epoch, resumed with 1
    (120, 16, 1, [(3, 2)], 1, True),            # and the reverse
    (103, 8, 3, [(2, 2), (4, 4)], 1, False),    # cut twice, the second inside the re-sharded rest
    (700, 16, 2, [(5, 3)], 3, True),            # repeated augmentation (DeiT's RASampler)
    (50, 4, 4, [(2, 3)], 1, False),             # a remainder smaller than a step
    (120, 16, 2, [(3, 1)], 1, True),            # cut after the epoch's last step: nothing left
])
def test_an_epoch_resumed_on_another_number_of_processes_trains_each_sample_as_often(n, batch, world, cuts,
                                                                                   repeats, drop_last):
    kept = _epoch_keys(n, batch, world, repeats=repeats, drop_last=drop_last)
    assert _epoch_keys(n, batch, world, repeats=repeats, drop_last=drop_last, cuts=cuts) == kept


def test_positions_are_global_and_progress_counts_samples():
    two = [ResumableBatchSampler(120, 16, drop_last=True, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in two:
        s.set_epoch(1)
    assert two[0].position(2) == {"epoch": 1, "world_size": 2, "consumed": 64}
    assert two[0].progress(2) == pytest.approx(64 / 96) and len(two[0]) == 3
    one = ResumableBatchSampler(120, 16, drop_last=True, seed=5, world_size=1)
    one.resume_at(two[0].position(2))
    one.set_epoch(1, start_batch=2)
    assert len(one) == 4 and one.progress(2) == pytest.approx(64 / 96) and one.progress(3) == pytest.approx(80 / 96)
    assert one.position(4) == {"epoch": 1, "world_size": 2, "consumed": 96}
    one.set_epoch(2)  # the next epoch is a fresh 1-process epoch
    assert len(one) == 7 and one.position(7) == {"epoch": 2, "world_size": 1, "consumed": 112}


def test_repeated_augmentation_copies_are_different_views_of_one_image(tiny_dataset):
    """DeiT's RASampler shows k differently augmented copies of an image; with one seed per
    (epoch, index) the copies were byte-identical. 200+ samples of PLSC's train pipeline (at
    32 px), 2 ranks, 2 epochs: every copy differs from every other copy of its image in its epoch."""
    import os
    from collections import defaultdict
    from deit.build.components import build_dataset
    ops = [{"DecodeImage": {"to_rgb": True, "channel_first": False}},
           {"RandCropImage": {"size": 32, "interpolation": "bicubic", "backend": "pil"}},
           {"RandFlipImage": {"flip_code": 1}},
           {"TimmAutoAugment": {"config_str": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "img_size": 32,
                                "mean": [0.485, 0.456, 0.406]}},
           {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                               "order": ""}},
           {"RandomErasing": {"EPSILON": 0.25, "sl": 0.02, "sh": 1.0 / 3.0, "r1": 0.3, "attempt": 10,
                              "use_log_aspect": True, "mode": "pixel"}},
           {"ToCHWImage": None}]
    section = {"dataset": {"name": "ImageNetDataset", "image_root": tiny_dataset, "transform_ops": ops,
                           "cls_label_path": os.path.join(tiny_dataset, "train_list.txt"), "max_bad_fraction": 0.01}}
    dataset = build_dataset(section, 42, "test")
    copies = defaultdict(list)
    for epoch in (1, 2):  # 120 images: 120 samples an epoch over the 2 ranks
        for rank in range(2):
            sampler = ResumableBatchSampler(len(dataset), 8, seed=42, rank=rank, world_size=2, repeats=3)
            sampler.set_epoch(epoch)
            for batch in sampler:
                for key in batch:
                    copies[key[0], epoch].append(dataset[key][0])
    assert sum(len(v) for v in copies.values()) >= 200
    repeated = [views for views in copies.values() if len(views) > 1]
    assert len(repeated) >= 50
    for views in repeated:
        assert len({v.tobytes() for v in views}) == len(views)


def test_two_ranks_draw_different_mixup_for_the_same_batch_index(tiny_dataset):
    """timm and PLSC draw Mixup/CutMix per rank; one draw for all ranks mixed the global batch alike."""
    from deit.data.loader import Loader
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, num_classes=4)
    drawn = {}

    def record(rank):
        def transform(images, labels, rng):
            drawn.setdefault(rank, []).append(mixup.params(rng))
            return images, labels
        return transform

    class Data:
        def __len__(self):
            return 64

        def __getitem__(self, key):
            return np.zeros((3, 4, 4), np.float32), 0

    for rank in range(2):
        sampler = ResumableBatchSampler(64, 4, seed=1, rank=rank, world_size=2)
        loader = Loader(Data(), sampler, batch_transform=record(rank), seed=1, rank=rank)
        loader.set_epoch(1)
        list(loader)
    assert len(drawn[0]) == len(drawn[1]) == 8
    assert all(a != b for a, b in zip(drawn[0], drawn[1]))
    again = {}
    sampler = ResumableBatchSampler(64, 4, seed=1, rank=1, world_size=2)
    loader = Loader(Data(), sampler, batch_transform=lambda i, l, rng: (again.setdefault(1, []).append(mixup.params(rng)), (i, l))[1], seed=1, rank=1)
    loader.set_epoch(1, start_batch=3)
    list(loader)
    assert again[1] == drawn[1][3:]  # still a pure function of (seed, epoch, batch, rank): resumable


@pytest.mark.parametrize("content, said", [
    ("img0.jpg ²\n".encode(), r"list.txt:1: expected 'relative/path label' with a non-negative integer label, got 'img0.jpg ²'"),
    (b"img0.jpg --1\n", r"list.txt:1: expected .* got 'img0.jpg --1'"),
    (b"img0.jpg 0\ncaf\xe9.jpg 1\n", r"list.txt:2: not UTF-8 text \(byte 0xe9 at column 4\); save the list as UTF-8"),
])
def test_list_files_with_odd_labels_or_bytes_are_one_clear_line(tmp_path, content, said):
    """'²'.isdigit() is True and int('²') raised; Latin-1 bytes raised UnicodeDecodeError."""
    root, listing = _write_dataset(tmp_path)
    (tmp_path / "list.txt").write_bytes(content)
    with pytest.raises(DataError, match=said):
        ImageNetDataset(root, listing)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    root, listing = _write_dataset(tmp_path)
    data = (tmp_path / "list.txt").read_bytes()
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"))  # Windows' Notepad
    dataset = ImageNetDataset(root, listing)
    assert dataset.samples[0] == (os.path.join(root, "img0.jpg"), 0) and len(dataset) == 10
