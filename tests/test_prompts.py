"""Prompt building: chat layout, image tokens = image features, budget error/skip, SFT targets."""
import json
import pickle

import grain
import numpy as np
import pytest

from hopchain_jax.data.grain_source import HopChainSource
from hopchain_jax.data.prompts import (BuildPrompt, DropSkipped, PromptConfig, batch_prompts, format_answer,
                                       prompt_transforms)
from hopchain_jax.models.image_processor import QWEN2_5_VL, QWEN3_VL, preprocess
from hopchain_jax.models.tokenizer import (IM_END_ID, IMAGE_PAD_ID, build_chat_prompt, expand_image_tokens,
                                           load_tokenizer)

SMALL = QWEN2_5_VL.replace(max_pixels=100_000)  # 800x600 synthetic images -> 117 image tokens: fast tests


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def source(small_dataset):
    return HopChainSource(small_dataset[0])


def test_prompt_matches_the_chat_template_and_the_image(tok, source):
    build = BuildPrompt(tok, PromptConfig(processor=SMALL), merge_size=2)
    for i in (0, len(source) - 1):
        el = source[i]
        out = build.map(el)
        grid = out["image_grid_thw"]
        assert grid.dtype == np.int64 and grid.shape == (1, 3)
        n_tokens = int(np.prod(grid)) // 4
        assert int(np.sum(out["prompt_ids"] == IMAGE_PAD_ID)) == n_tokens
        assert out["prompt_ids"].dtype == np.int32 and out["prompt_ids"].ndim == 1
        assert out["pixel_values"].dtype == np.float32
        assert out["pixel_values"].shape == (int(np.prod(grid)), SMALL.patch_dim)
        ref = preprocess(el["image"], SMALL)
        assert np.array_equal(ref.pixel_values, out["pixel_values"])
        # the same prompt through the plain string route: render, expand, tokenize
        text = build_chat_prompt([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": el["question"] + PromptConfig().instruction_suffix}]}])
        ids = tok(expand_image_tokens(text, grid), add_special_tokens=False)["input_ids"]
        assert out["prompt_ids"].tolist() == ids
        assert tok.decode(out["prompt_ids"]).endswith("\\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
        rec = json.loads(el["record"])
        assert out["answer"] == rec["answer"] and out["id"] == rec["id"] and out["variant"] == rec["variant"]
        assert out["question"] == rec["question"] and out["record"] == el["record"]
        # SFT target: the gold rationale, then <|im_end|>
        assert out["target_text"] == rec["rationale"] and "\\boxed{" in rec["rationale"]
        assert out["target_ids"].dtype == np.int32 and out["target_ids"][-1] == IM_END_ID
        assert tok.decode(out["target_ids"][:-1]) == rec["rationale"]


def test_target_without_rationale_and_answer_formats(tok, source):
    build = BuildPrompt(tok, PromptConfig(processor=SMALL))
    el = dict(source[0])
    rec = json.loads(el["record"])
    for answer, text in ((7, "\\boxed{7}"), (2.5, "\\boxed{2.5}"), (3.0, "\\boxed{3}"), (-0.0001, "\\boxed{-0.0001}")):
        el["record"] = json.dumps({**rec, "rationale": None, "answer": answer}).encode()
        out = build.map(el)
        assert out["target_text"] == text
        assert tok.decode(out["target_ids"]) == text + "<|im_end|>"
    assert format_answer(1e-7) == "0.0000001" and format_answer(np.int64(12)) == "12"


def test_special_tokens_in_the_question_stay_text(tok, source):
    build = BuildPrompt(tok, PromptConfig(processor=SMALL, system_prompt="Be brief."))
    el = {**source[0], "question": "Count <|image_pad|> items<|im_end|>"}
    out = build.map(el)
    assert int(np.sum(out["prompt_ids"] == IMAGE_PAD_ID)) == int(np.prod(out["image_grid_thw"])) // 4
    assert tok.decode(out["prompt_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "Count <|image_pad|> items<|im_end|>\nThink" in tok.decode(out["prompt_ids"])
    assert tok.backend_tokenizer.encode_special_tokens is False  # the shared tokenizer is left alone


def test_over_budget_error_names_the_record_and_the_limit(tok, source):
    build = BuildPrompt(tok, PromptConfig(max_prompt_tokens=300))  # default processor: 609 image tokens
    el = source[3]
    with pytest.raises(ValueError, match=rf"record '{el['id']}'.*max_prompt_tokens") as info:
        build.map(el)
    assert "max_pixels" in str(info.value) and "on_over_budget='skip'" in str(info.value)


def test_over_budget_skip_mode_drops_and_counts(tok, source):
    # default processor: an 800x600 image takes 609 tokens, a 200x150 one 35
    cfg = PromptConfig(max_prompt_tokens=300, on_over_budget="skip")
    small = [{**source[i], "image": source[i]["image"][::4, ::4]} for i in range(4)]
    big = [source[i] for i in range(4, 7)]
    elements = [small[0], big[0], small[1], big[1], big[2], small[2], small[3]]
    transforms = prompt_transforms(tok, cfg)
    build, drop = transforms
    assert isinstance(build, grain.transforms.Map) and isinstance(drop, grain.transforms.Filter)
    ds = grain.MapDataset.source(elements).map(build).to_iter_dataset().filter(drop)
    kept = [el["id"] for el in ds]
    assert kept == [el["id"] for el in small]
    assert build.num_skipped == 3
    marker = build.map(big[0])
    assert marker["prompt_ids"] is None and big[0]["id"] in marker["skip_reason"] and build.num_skipped == 4
    # plain python: batch_prompts drops markers, keeps variable lengths (no padding)
    batches = list(batch_prompts(map(build.map, elements), 3))
    assert [len(b) for b in batches] == [3, 1] and build.num_skipped == 7
    assert all(b["prompt_ids"].ndim == 1 for batch in batches for b in batch)
    assert [len(b) for b in batch_prompts(map(build.map, elements), 3, drop_remainder=True)] == [3]
    # nothing fits: a clear error instead of an endless loop
    guard = DropSkipped(max_consecutive=2)
    with pytest.raises(ValueError, match="in a row"):
        [guard.filter(build.map(el)) for el in big]


def test_config_validation_and_pickling(tok):
    with pytest.raises(ValueError, match="on_over_budget"):
        PromptConfig(on_over_budget="drop")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptConfig(max_prompt_tokens=0)
    with pytest.raises(ValueError, match="merge_size"):
        BuildPrompt(tok, PromptConfig(), merge_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        list(batch_prompts([], 0))
    build = BuildPrompt(tok, PromptConfig(processor=QWEN3_VL))
    clone = pickle.loads(pickle.dumps(build))  # Grain worker processes get pickled transforms
    assert repr(clone) == repr(build) and clone.num_skipped == 0
    text = "Count <|image_pad|> and <|im_end|>"
    assert clone._encode(text, split_special=True).tolist() == build._encode(text, split_special=True).tolist()
    assert IMAGE_PAD_ID not in build._encode(text, split_special=True)
