"""Decoded-image cache: same evaluation pixels as the PIL path, device augmentation, CLI run."""
from __future__ import annotations

import torch

from conftest import COOP_CFG, SMALL_DATA, SYN_CFG, final_test, run_cli
from datasets import build_data_loader, build_transform
from datasets.decoded_cache import DecodedImageLoader, decode_all, device_ops


def _setup(data_root, transforms):
    from configs.config import merge_from_list
    from trainers import get_cfg
    from datasets import build_dataset

    cfg = get_cfg()
    merge_from_list(cfg, ["DATASET.ROOT", data_root, *SMALL_DATA[:6], "INPUT.SIZE", "(32, 32)",
                          "INPUT.INTERPOLATION", "bicubic", "INPUT.TRANSFORMS", transforms])
    return cfg, build_dataset(cfg)


def test_eval_batches_equal_the_pil_pipeline(data_root):
    cfg, ds = _setup(data_root, "('random_flip', 'normalize')")
    pil = build_data_loader(ds.test, build_transform(cfg, False), 8, is_train=False, num_classes=8)
    images = decode_all(ds.test, (32, 32), "bicubic")
    assert images.dtype == torch.uint8 and images.shape == (len(ds.test), 3, 32, 32)
    fast = DecodedImageLoader(images, ds.test, 8, ["normalize"], cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, (0.08, 1.0),
                              8, pil.sampler, False, torch.device("cpu"))
    for a, b in zip(pil, fast):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
        assert torch.allclose(a["img"], b["img"], atol=1e-5)


def test_device_augmentation_is_seeded_and_changes_views(data_root):
    cfg, ds = _setup(data_root, "('random_resized_crop', 'random_flip', 'normalize')")
    assert device_ops(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
    assert device_ops(["colorjitter", "normalize"]) is None
    pil = build_data_loader(ds.train_x, build_transform(cfg, True), 8, is_train=True, num_classes=8, seed=2)
    images = decode_all(ds.train_x, (32, 32), "bicubic")

    def epoch_batches(epoch):
        loader = DecodedImageLoader(images, ds.train_x, 8, device_ops(cfg.INPUT.TRANSFORMS), cfg.INPUT.PIXEL_MEAN,
                                    cfg.INPUT.PIXEL_STD, (0.5, 1.0), 8, pil.sampler, True, torch.device("cpu"), seed=2)
        loader.sampler.set_epoch(epoch)
        return list(loader)

    a, b, c = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert len(a) == len(ds.train_x) // 8
    assert all(torch.equal(x["img"], y["img"]) for x, y in zip(a, b))  # reproducible per (seed, epoch)
    assert not torch.equal(a[0]["index"], c[0]["index"])
    assert a[0]["img"].shape == (8, 3, 32, 32) and torch.isfinite(a[0]["img"]).all()


def test_train_from_cli_with_decoded_cache(tmp_path, data_root):
    out = tmp_path / "dec"
    args = ["--root", data_root, "--seed", "1", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", SYN_CFG, *SMALL_DATA, "OPTIM.MAX_EPOCH", "1", "CACHE.FEATURES", "off",
            "DATALOADER.DECODED_CACHE", "disk", "DATALOADER.DECODED_CACHE_DIR", str(tmp_path / "dc")]
    assert run_cli(args) == 0
    assert "decoded-image cache (disk)" in (out / "log.txt").read_text()
    assert len(list((tmp_path / "dc").glob("decoded_*.pt"))) == 3
    assert "accuracy" in final_test(str(out))
