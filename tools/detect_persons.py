"""Write the person boxes of an EmoSet folder once, for UniEmoX's person branch.

    python tools/detect_persons.py --root data --arch fasterrcnn_resnet50_fpn_v2 \\
        --weights /models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth [--score-threshold 0.8 --nms 0.4]

Runs a torchvision COCO detector (weights from a LOCAL file, read with ``weights_only=True``;
nothing is downloaded) on every image of ``<root>/<dir>``'s train, val and test lists and keeps,
per image, the highest-scoring person box with score >= ``--score-threshold`` (the released code
uses YOLOv3 with confidence 0.8 and NMS 0.4); images without one get ``null`` (the trainer then
uses the whole image). Output: ``<root>/<dir>/person_boxes.json`` (format in
``datasets/formats/person_boxes.py``), written atomically. Training never runs a detector.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import check_overwrite  # noqa: E402
from utils.errors import CheckpointError, ConfigError, EmoLabError  # noqa: E402

COCO_PERSON = 1  # torchvision's 91-index COCO labels
#: arch -> (score-threshold kwarg, nms kwarg)
ARCHS = {
    "fasterrcnn_resnet50_fpn": ("box_score_thresh", "box_nms_thresh"),
    "fasterrcnn_resnet50_fpn_v2": ("box_score_thresh", "box_nms_thresh"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("box_score_thresh", "box_nms_thresh"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("box_score_thresh", "box_nms_thresh"),
    "retinanet_resnet50_fpn": ("score_thresh", "nms_thresh"),
    "retinanet_resnet50_fpn_v2": ("score_thresh", "nms_thresh"),
    "fcos_resnet50_fpn": ("score_thresh", "nms_thresh"),
    "ssdlite320_mobilenet_v3_large": ("score_thresh", "nms_thresh"),
    "ssd300_vgg16": ("score_thresh", "nms_thresh"),
}


def build_detector(arch: str, weights: str, score_threshold: float, nms: float) -> torch.nn.Module:
    """A torchvision detector with the weights of the local file ``weights`` (never downloaded)."""
    from torchvision.models import detection

    from trainers.uniemox.checkpoints import read_checkpoint

    if arch not in ARCHS:
        from utils.registry import closest

        hint = closest(arch, list(ARCHS))
        raise ConfigError(f"unknown --arch {arch!r}" + (f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(ARCHS)})"))
    score_key, nms_key = ARCHS[arch]
    model = getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=91,
                                     **{score_key: score_threshold, nms_key: nms})
    obj = read_checkpoint(weights, "detector weights", allow=())
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"detector weights {weights} hold no state dict")
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"detector weights {weights} do not fit {arch}: {str(e).splitlines()[0][:300]}") from None
    return model.eval()


def top_person(output: Dict[str, torch.Tensor], score_threshold: float) -> Optional[List[float]]:
    """``[x1, y1, x2, y2, score]`` of the best person detection at or above the threshold, else None."""
    keep = (output["labels"] == COCO_PERSON) & (output["scores"] >= score_threshold)
    if not bool(keep.any()):
        return None
    scores = output["scores"][keep]
    best = int(scores.argmax())
    return [float(v) for v in output["boxes"][keep][best].tolist()] + [float(scores[best])]


@torch.no_grad()
def detect(model: torch.nn.Module, paths: Sequence[str], score_threshold: float, batch_size: int,
           device: torch.device) -> List[Optional[List[float]]]:
    from torchvision.io import ImageReadMode, decode_image, read_file

    from utils.errors import DatasetError

    out: List[Optional[List[float]]] = []
    for i in range(0, len(paths), batch_size):
        images = []
        for p in paths[i:i + batch_size]:
            try:
                images.append(decode_image(read_file(p), mode=ImageReadMode.RGB).to(device).float() / 255.0)
            except (OSError, RuntimeError) as e:
                raise DatasetError(f"cannot read image {p}: {str(e).splitlines()[0]}") from None
        out += [top_person(o, score_threshold) for o in model(images)]
    return out


def _is_box_file(path: str) -> bool:
    import json

    from datasets.formats.person_boxes import FORMAT

    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.cli import run_tool

    return run_tool(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data", help="DATASET.ROOT")
    p.add_argument("--dir", default="EmoSet-118K", help="the EmoSet folder under --root")
    p.add_argument("--arch", default="fasterrcnn_resnet50_fpn_v2", help=f"torchvision detector ({', '.join(ARCHS)})")
    p.add_argument("--weights", required=True, help="local weight file of --arch (COCO, 91 classes)")
    p.add_argument("--score-threshold", type=float, default=0.8)
    p.add_argument("--nms", type=float, default=0.4, help="IoU threshold of the detector's NMS")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="", help="output file (default <root>/<dir>/person_boxes.json)")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not a person-box file")
    args = p.parse_args(argv)
    try:
        from datasets.formats.emoset import EmoSet
        from datasets.formats.person_boxes import relative_key, write_person_boxes

        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        ds = EmoSet.load(os.path.join(args.root, args.dir), attributes=False)
        data = ds.train_x + ds.val + ds.test
        model = build_detector(args.arch, args.weights, args.score_threshold, args.nms).to(device)
        t0 = time.time()
        out = args.out or os.path.join(ds.root, "person_boxes.json")
        check_overwrite(out, args.force, _is_box_file)  # before the detector runs for minutes
        boxes = detect(model, [d.impath for d in data], args.score_threshold, max(1, args.batch_size), device)
        table = {relative_key(d.impath, ds.root): b for d, b in zip(data, boxes)}
        write_person_boxes(out, table, f"torchvision {args.arch} ({os.path.basename(args.weights)}), NMS {args.nms}",
                           args.score_threshold)
    except EmoLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    found = sum(b is not None for b in boxes)
    print(f"{len(boxes)} images, {found} with a person box ({time.time() - t0:.1f}s): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
