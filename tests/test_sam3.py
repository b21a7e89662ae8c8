"""SAM3 stage 2 (hopchain_jax/vlm/sam3.py): pre/post-processing against transformers' reference, and a tiny
random Sam3Model end to end.

transformers' Sam3ImageProcessor imports torchvision (absent here), so the references below re-state its code
paths exactly: TorchvisionBackend.process_image + torchvision's resize_image + the fused rescale/normalise, and
Sam3ImageProcessor.post_process_instance_segmentation. No network: the CLIP tokenizer is a tiny one built
in memory (single characters, no merges) with transformers' own CLIPTokenizer class.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")   # >= 5.17 (pyproject): every supported one has Sam3Model

from hopchain_jax.synth.stages import ImageInput, normalized_box  # noqa: E402
from hopchain_jax.vlm import sam3  # noqa: E402
from hopchain_jax.vlm.sam3 import (  # noqa: E402
    PromptCandidates, Sam3ImageConfig, Sam3Segmenter, Sam3Thresholds, boxes_to_pixels, greedy_mask_nms,
    image_config_from_dir, mask_iou_matrix, merge_candidates, postprocess_prompt, preprocess_image,
    resize_uint8, tokenize_prompts)

from hf_tiny import SAM3_IMAGE_SIZE as IMAGE_SIZE, SAM3_QUERIES as QUERIES, save_tiny_sam3, tiny_clip_tokenizer  # noqa: E402
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------------- tiny checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny random SAM3 checkpoint with its tokenizer (no preprocessor_config.json)."""
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "sam3-tiny")


@pytest.fixture(scope="module")
def segmenter(tiny_dir):
    return Sam3Segmenter.from_pretrained(tiny_dir, score_threshold=0.0, min_area_frac=0.0005, iou_threshold=0.7)


# ------------------------------------------------------------------------------------------- pre-processing


def reference_pixel_values(pixels: np.ndarray, size, mean, std, rescale_factor=1 / 255) -> np.ndarray:
    """transformers' Sam3ImageProcessor (TorchvisionBackend) for one numpy image, re-stated without torchvision.

    process_image: from_numpy, HWC -> CHW, contiguous; _preprocess: stack, torchvision resize_image (bilinear,
    antialias, align_corners=False, uint8 kept on AVX2/AVX512 CPUs, else float32 + round), then
    rescale_and_normalize fused: mean/std tensors times 1/rescale_factor, image.to(float32).sub_(m).div_(s).
    """
    import torch.nn.functional as F
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    batch = torch.stack([image])
    native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    x = batch if native else batch.to(torch.float32)
    x = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False, antialias=True)
    if not native:
        x = x.round_().to(torch.uint8)
    m = torch.tensor(mean) * (1.0 / rescale_factor)
    s = torch.tensor(std) * (1.0 / rescale_factor)
    out = x.to(torch.float32).sub_(m.view(-1, 1, 1)).div_(s.view(-1, 1, 1))
    return out[0].numpy()


@pytest.mark.parametrize("hw,size,mean,std", [
    ((120, 160), (112, 112), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((60, 45), (112, 112), CLIP_MEAN, CLIP_STD),
    ((300, 200), (96, 128), CLIP_MEAN, CLIP_STD),
])
def test_preprocess_equals_transformers_reference(hw, size, mean, std):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    config = Sam3ImageConfig(size=size, image_mean=mean, image_std=std)
    got = preprocess_image(pixels, config)
    assert got.dtype == np.float32 and got.shape == (3, *size)
    np.testing.assert_array_equal(got, reference_pixel_values(pixels, size, mean, std))


def test_resize_is_close_to_pil_bilinear():
    """An independent check of the resize kernel: PIL's antialiased bilinear differs by at most 1 level."""
    from PIL import Image
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    ours = resize_uint8(pixels, (112, 112)).transpose(1, 2, 0).astype(int)
    pil = np.asarray(Image.fromarray(pixels).resize((112, 112), Image.BILINEAR)).astype(int)
    assert np.abs(ours - pil).max() <= 1
    assert (ours != pil).mean() < 0.25
    # channels really are R, G, B in order
    flat = np.zeros((20, 20, 3), np.uint8)
    flat[..., 0], flat[..., 1], flat[..., 2] = 10, 128, 250
    out = preprocess_image(flat, Sam3ImageConfig(size=(8, 8)))
    np.testing.assert_allclose(out[:, 0, 0], (np.array([10, 128, 250]) / 255 - 0.5) / 0.5, atol=1e-6)


def test_preprocess_rejects_bad_pixels():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess_image(np.zeros((8, 8, 4), np.uint8))
    gray = np.full((10, 10), 77, np.uint8)
    np.testing.assert_array_equal(preprocess_image(gray, Sam3ImageConfig(size=(4, 4)))[0],
                                  preprocess_image(np.repeat(gray[..., None], 3, 2), Sam3ImageConfig(size=(4, 4)))[0])


def test_tokenize_like_sam3_processor():
    tok = tiny_clip_tokenizer()
    ids, mask = tokenize_prompts(tok, ["cat", "red car"])
    ref = tok(["cat", "red car"], padding="max_length", max_length=32, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert ids.shape == (2, 32) and ids.dtype == np.int64
    assert ids[0, 0] == 0 and list(ids[0, 1:5]) == [tok.get_vocab()[t] for t in ("c", "a", "t</w>")] + [1]
    long_ids, long_mask = tokenize_prompts(tok, ["a" * 100])
    assert long_ids.shape == (1, 32) and long_mask.sum() == 32  # truncated, not an error


# ------------------------------------------------------------------------------------------- post-processing


def reference_instance_segmentation(pred_logits, presence_logits, pred_boxes, pred_masks, threshold,
                                    mask_threshold, target_size):
    """Sam3ImageProcessor.post_process_instance_segmentation for one image, re-stated (its module imports
    torchvision): sigmoid scores x presence, > threshold, sigmoid masks, bilinear resize, > mask_threshold,
    boxes times (w, h, w, h)."""
    logits, presence = torch.from_numpy(pred_logits)[None], torch.from_numpy(presence_logits)[None]
    boxes, masks = torch.from_numpy(pred_boxes)[None], torch.from_numpy(pred_masks)[None]
    scores = (logits.sigmoid() * presence.sigmoid())[0]
    masks = masks.sigmoid()[0]
    h, w = target_size
    boxes = (boxes * torch.tensor([w, h, w, h]).view(1, 1, 4))[0]
    keep = scores > threshold
    kept_masks = torch.nn.functional.interpolate(masks[keep][None], size=target_size, mode="bilinear",
                                                 align_corners=False)[0]
    return scores[keep].numpy(), boxes[keep].numpy(), (kept_masks > mask_threshold).numpy()


def test_postprocess_equals_transformers_reference():
    rng = np.random.default_rng(3)
    q, h, w, H, W = 12, 16, 16, 45, 61
    logits = rng.normal(0, 2, q).astype(np.float32)
    presence = rng.normal(0, 1, 1).astype(np.float32)
    boxes = np.sort(rng.uniform(0, 1, (q, 2, 2)), axis=1).transpose(0, 2, 1).reshape(q, 4)[:, [0, 2, 1, 3]]
    boxes = boxes.astype(np.float32)
    masks = rng.normal(-1, 2, (q, h, w)).astype(np.float32)
    masks[:, 4:8, 4:8] += 6  # every mask has pixels, so the area filter (>= 1 px) keeps them all
    ref_scores, ref_boxes, ref_masks = reference_instance_segmentation(logits, presence, boxes, masks, 0.2, 0.5,
                                                                        (H, W))
    assert 2 <= len(ref_scores) < q  # the threshold bites
    th = Sam3Thresholds(score_threshold=0.2, min_area_frac=0.0, iou_threshold=1.0, max_instances_per_category=99)
    cand = postprocess_prompt("cat", logits, presence, boxes, masks, (H, W), th)
    order = np.argsort(-ref_scores, kind="stable")
    np.testing.assert_allclose(cand.scores, ref_scores[order], rtol=1e-6)
    np.testing.assert_array_equal(cand.masks, ref_masks[order])
    np.testing.assert_allclose(cand.boxes01 * np.array([W, H, W, H]), ref_boxes[order], rtol=1e-5)
    assert cand.drops == Counter(low_score=q - len(ref_scores))


def square_logits(shape, squares, inside=10.0, outside=-10.0):
    """float32 [N, H, W] mask logits: +inside on each (y0, y1, x0, x1) square, outside elsewhere."""
    out = np.full((len(squares), *shape), outside, np.float32)
    for k, (y0, y1, x0, x1) in enumerate(squares):
        out[k, y0:y1, x0:x1] = inside
    return out


def logit(p):
    return float(np.log(p / (1 - p)))


def test_score_threshold_uses_the_presence_factor():
    masks = square_logits((20, 20), [(0, 5, 0, 5), (10, 15, 10, 15), (0, 5, 10, 15)])
    boxes = np.tile(np.array([[0.0, 0.0, 0.5, 0.5]], np.float32), (3, 1))
    logits = np.array([logit(0.9), logit(0.6), logit(0.3)], np.float32)
    th = Sam3Thresholds(score_threshold=0.5, min_area_frac=0.0)
    both = postprocess_prompt("cat", logits, np.array([logit(0.99)]), boxes, masks, (20, 20), th)
    np.testing.assert_allclose(both.scores, [0.9 * 0.99, 0.6 * 0.99], rtol=1e-5)
    # a low presence probability removes queries that are confident on their own
    absent = postprocess_prompt("cat", logits, np.array([logit(0.6)]), boxes, masks, (20, 20), th)
    np.testing.assert_allclose(absent.scores, [0.9 * 0.6], rtol=1e-5)
    assert absent.drops["low_score"] == 2
    none = postprocess_prompt("cat", logits, None, boxes, masks, (20, 20), th)
    assert len(none) == 2


def test_area_filter():
    H = W = 20  # 400 px; min_area_frac 0.02 -> 8 px
    masks = square_logits((H, W), [(0, 2, 0, 2), (5, 15, 5, 15), (16, 19, 16, 19)])  # 4, 100, 9 px
    logits = np.array([3.0, 2.0, 1.0], np.float32)
    th = Sam3Thresholds(score_threshold=0.0, min_area_frac=0.02)
    cand = postprocess_prompt("cat", logits, None, np.zeros((3, 4), np.float32), masks, (H, W), th)
    assert [int(m.sum()) for m in cand.masks] == [100, 9]
    assert cand.drops == Counter(too_small=1)
    assert th.min_area_px(H, W) == 8 and Sam3Thresholds(min_area_frac=0).min_area_px(H, W) == 1


def test_nms_within_category_is_greedy():
    # A-B IoU 0.8, B-C IoU 0.8, A-C IoU 0.6: greedy keeps A, drops B, and so keeps C
    masks = square_logits((10, 30), [(0, 10, 0, 10), (0, 10, 1, 11), (0, 10, 2, 12), (0, 10, 20, 25)])
    iou = mask_iou_matrix(masks > 0)
    np.testing.assert_allclose(iou[0, 1], 90 / 110)
    np.testing.assert_allclose(iou[0, 2], 80 / 120)
    assert iou[0, 3] == 0
    logits = np.array([4.0, 3.0, 2.0, 1.0], np.float32)
    th = Sam3Thresholds(score_threshold=0.0, min_area_frac=0.0, iou_threshold=0.7)
    cand = postprocess_prompt("cat", logits, None, np.zeros((4, 4), np.float32), masks, (10, 30), th)
    kept_cols = [int(np.flatnonzero(m.any(0))[0]) for m in cand.masks]
    assert kept_cols == [0, 2, 20] and cand.drops == Counter(duplicate=1)
    # a higher-scoring duplicate wins whatever the query order
    keep, suppressed = greedy_mask_nms(masks[[1, 0]] > 0, np.array([0.2, 0.9]), 0.7)
    assert list(keep) == [1] and suppressed == {0: 1}
    loose = postprocess_prompt("cat", logits, None, np.zeros((4, 4), np.float32), masks, (10, 30),
                               Sam3Thresholds(score_threshold=0.0, min_area_frac=0.0, iou_threshold=0.95))
    assert len(loose) == 4


def test_empty_inputs():
    assert mask_iou_matrix(np.zeros((0, 5, 5), bool)).shape == (0, 0)
    cand = postprocess_prompt("cat", np.full(4, -9.0, np.float32), None, np.zeros((4, 4), np.float32),
                              np.zeros((4, 8, 8), np.float32), (10, 10), Sam3Thresholds())
    assert len(cand) == 0 and cand.masks.shape == (0, 10, 10) and cand.drops == Counter(low_score=4)
    instances, labels, drops, _ = merge_candidates([cand], (10, 10))
    assert instances == [] and labels.shape == (10, 10) and not drops


def test_mask_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(4)
    masks = np.zeros((6, 24, 24), bool)
    for k in range(5):
        y, x = rng.integers(0, 16, 2)
        masks[k, y:y + 8, x:x + 8] = rng.random((8, 8)) < 0.7
    flat = masks.reshape(6, -1)
    inter = (flat[:, None] & flat[None]).sum(-1)
    union = (flat[:, None] | flat[None]).sum(-1)
    brute = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    np.testing.assert_allclose(mask_iou_matrix(masks), brute)


def test_cap_per_category():
    masks = square_logits((10, 40), [(0, 5, 0, 5), (0, 5, 10, 15), (0, 5, 20, 25), (0, 5, 30, 35)])
    logits = np.array([1.0, 4.0, 2.0, 3.0], np.float32)
    th = Sam3Thresholds(score_threshold=0.0, min_area_frac=0.0, max_instances_per_category=2)
    cand = postprocess_prompt("cat", logits, None, np.zeros((4, 4), np.float32), masks, (10, 40), th)
    assert [int(np.flatnonzero(m.any(0))[0]) for m in cand.masks] == [10, 30]
    assert cand.drops == Counter(over_cap=2)


def candidates(category, scores, squares, shape, boxes=None):
    masks = square_logits(shape, squares) > 0
    n = len(scores)
    return PromptCandidates(category, np.asarray(scores, np.float32),
                            np.asarray(boxes if boxes is not None else [[0, 0, 1, 1]] * n, np.float32), masks)


def test_cross_category_duplicates_keep_the_higher_score():
    shape = (20, 40)
    cats = [candidates("cat", [0.6, 0.5], [(0, 10, 0, 10), (0, 10, 30, 40)], shape),
            candidates("dog", [0.9], [(0, 10, 1, 10)], shape)]  # the same object as cat's first
    th = Sam3Thresholds(min_area_frac=0.0, iou_threshold=0.7)
    instances, labels, drops, log = merge_candidates(cats, shape, th)
    assert [(i["id"], i["category"], i["score"]) for i in instances] == [("i0", "cat", 0.5), ("i1", "dog", 0.9)]
    assert drops == Counter({("cat", "duplicate"): 1})
    assert log == [{"category": "cat", "kept_category": "dog", "score": 0.6, "iou": 0.9}]
    assert int((labels == 2).sum()) == 90 and int((labels == 1).sum()) == 100


def test_labels_overlap_goes_to_the_higher_score():
    shape = (20, 20)
    cats = [candidates("table", [0.5], [(0, 20, 0, 20)], shape),       # 400 px, under the cup
            candidates("cup", [0.8], [(5, 10, 5, 10)], shape),         # 25 px, IoU 0.0625
            candidates("spoon", [0.3], [(6, 9, 6, 9)], shape)]         # inside the cup: nothing visible
    th = Sam3Thresholds(min_area_frac=0.0, iou_threshold=0.7)
    instances, labels, drops, _ = merge_candidates(cats, shape, th)
    assert [i["category"] for i in instances] == ["table", "cup"]
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert labels[7, 7] == 2 and labels[0, 0] == 1
    for k, inst in enumerate(instances):
        assert inst["area"] == int((labels == k + 1).sum())
    assert instances[0]["area"] == 375 and drops == Counter({("spoon", "too_small"): 1})
    capped = merge_candidates(cats, shape, Sam3Thresholds(min_area_frac=0.0, max_instances=1))
    assert [i["category"] for i in capped[0]] == ["cup"] and capped[2][("table", "over_cap")] == 1


def test_boxes_to_0_1000():
    W, H = 160, 120
    px = boxes_to_pixels(np.array([[0.1, 0.2, 0.55, 0.9], [-0.2, 0.5, 1.3, 0.5], [0.999, 0.0, 1.0, 1.0],
                                   [0.101, 0.201, 0.549, 0.899]]), W, H)
    # the pixel box encloses the model's box: starts round down, ends round up
    assert px.tolist() == [[16, 24, 88, 108], [0, 60, 160, 61], [159, 0, 160, 120], [16, 24, 88, 108]]
    assert normalized_box(tuple(px[0]), W, H) == [100, 200, 550, 900]
    shape = (H, W)
    cand = candidates("cat", [0.9], [(30, 90, 20, 100)], shape, boxes=[[0.1, 0.2, 0.55, 0.9]])
    instances, _, _, _ = merge_candidates([cand], shape, Sam3Thresholds(min_area_frac=0.0))
    assert instances[0]["bbox"] == [100, 200, 550, 900]
    for b in (normalized_box(tuple(p), W, H) for p in px):
        assert all(isinstance(v, int) and 0 <= v <= 1000 for v in b) and b[0] < b[2] and b[1] < b[3]


# ------------------------------------------------------------------------------------------- checkpoint loading


def test_image_config_from_dir(tiny_dir, tmp_path):
    assert image_config_from_dir(tiny_dir) == Sam3ImageConfig(size=(IMAGE_SIZE, IMAGE_SIZE))
    d = tmp_path / "ck"
    d.mkdir()
    (d / "config.json").write_text((tiny_dir / "config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "image_mean": list(CLIP_MEAN),
         "image_std": list(CLIP_STD), "resample": 2, "rescale_factor": 1 / 255}))
    assert image_config_from_dir(d).image_mean == CLIP_MEAN
    (d / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 1008, "width": 1008}}))
    with pytest.raises(ValueError, match="image_size"):
        image_config_from_dir(d)


def test_from_pretrained_says_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        Sam3Segmenter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type='clip'"):
        Sam3Segmenter.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Sam3Segmenter.from_pretrained(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- end to end


def random_image(seed=5):
    pixels = np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    return ImageInput(pixels, source=f"random-{seed}")


def test_segment_end_to_end(segmenter, tiny_dir):
    assert segmenter.name == f"sam3:{tiny_dir.name}"
    cats = ["cat", "dog", "red car", "cat"]
    seg, report = segmenter.segment_with_report(random_image(), cats)
    assert set(report) == {"low_score", "too_small", "duplicate", "over_cap", "empty_categories", "errors"}
    assert report["errors"] == {}
    insts, labels = seg.instances, seg.labels
    assert labels.dtype == np.uint8 and labels.shape == (120, 160)
    assert 3 <= len(insts) <= 3 * QUERIES and int(labels.max()) == len(insts)
    assert len({i["category"] for i in insts}) >= 2
    for k, inst in enumerate(insts):
        assert set(inst) == {"id", "category", "bbox", "area", "score", "attributes", "occludes"}
        assert inst["id"] == f"i{k}" and inst["category"] in cats
        b = inst["bbox"]
        assert all(isinstance(v, int) and 0 <= v <= 1000 for v in b) and b[0] < b[2] and b[1] < b[3]
        assert inst["area"] == int((labels == k + 1).sum()) > 0
        assert 0.0 <= inst["score"] <= 1.0 and inst["attributes"] == {} and inst["occludes"] == []
    order = [cats.index(i["category"]) for i in insts]
    assert order == sorted(order)  # ids follow the categories' order
    # every query of every prompt ("cat" asked twice runs once) is kept or dropped for one reason
    assert len(insts) + sum(report[r] for r in sam3.DROP_REASONS) == 3 * QUERIES
    assert report["duplicate"] > 0
    assert report["empty_categories"] == [c for c in ("cat", "dog", "red car")
                                          if not any(i["category"] == c for i in insts)]
    assert segmenter.segment(random_image(), cats).instances == insts
    # a strict threshold: nothing kept, every category reported empty
    strict = Sam3Segmenter(segmenter.model, segmenter.tokenizer, segmenter.image_config,
                           Sam3Thresholds(score_threshold=1.0))
    seg2, rep2 = strict.segment_with_report(random_image(), ["cat", "dog"])
    assert seg2.instances == [] and not seg2.labels.any()
    assert rep2["errors"] == {} and rep2["empty_categories"] == ["cat", "dog"]
    assert rep2["low_score"] == 2 * QUERIES


def test_backbone_runs_once_and_prompts_share_it(segmenter, monkeypatch):
    calls = Counter()
    model = segmenter.model
    real_vision, real_forward = model.get_vision_features, model.forward

    def vision(*a, **k):
        calls["vision"] += 1
        return real_vision(*a, **k)

    def forward(*a, **k):
        calls["forward"] += 1
        assert k.get("pixel_values") is None  # the detector reuses the image features
        return real_forward(*a, **k)

    monkeypatch.setattr(model, "get_vision_features", vision)
    monkeypatch.setattr(model, "forward", forward)
    seg = Sam3Segmenter(model, segmenter.tokenizer, segmenter.image_config, segmenter.thresholds,
                        prompts_per_batch=2)
    seg.segment(random_image(), ["cat", "dog", "bus"])
    assert calls == Counter(vision=1, forward=2)
    # batched prompts give what single prompts give
    feats = seg.vision_features(random_image().pixels)
    batched = seg.predict_prompts(feats, ["cat", "dog"])
    single = seg.predict_prompts(feats, ["dog"])[0]
    for key in ("pred_logits", "presence_logit", "pred_boxes", "pred_masks"):
        np.testing.assert_allclose(batched[1][key], single[key], rtol=1e-4, atol=1e-5)


def test_a_failing_category_is_reported_not_raised(segmenter, monkeypatch):
    model = segmenter.model
    real_forward = model.forward
    poison = tokenize_prompts(segmenter.tokenizer, ["bomb"])[0][0]

    def forward(*a, input_ids=None, **k):
        if any(np.array_equal(row, poison) for row in input_ids.cpu().numpy()):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_forward(*a, input_ids=input_ids, **k)

    monkeypatch.setattr(model, "forward", forward)
    seg, report = segmenter.segment_with_report(random_image(), ["cat", "bomb", "", "dog"])
    assert set(report["errors"]) == {"bomb", ""}
    assert "RuntimeError: CUDA out of memory" in report["errors"]["bomb"]
    assert len(seg.instances) + sum(report[r] for r in sam3.DROP_REASONS) == 2 * QUERIES  # cat and dog ran
    assert {i["category"] for i in seg.instances} <= {"cat", "dog"} and seg.instances
    assert "bomb" not in report["empty_categories"]


def test_module_imports_without_torch_at_import_time():
    src = open(sam3.__file__).read().split('"""', 2)[2]
    top_level = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert not any("torch" in ln or "transformers" in ln for ln in top_level)
