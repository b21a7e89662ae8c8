"""Vision towers of Qwen2.5-VL and Qwen3-VL.

Host side (`prepare_vision_inputs`, numpy): everything that depends only on the images' grids —
the window permutation (2.5-VL), per-patch rotary (h, w) positions, attention segment ids, the
bilinear resampling of Qwen3-VL's learned position table — packed into fixed-size arrays padded to a
bucket so the jitted tower does not recompile for every new image size.

Device side (`VisionTower`, NNX): patch embedding (the 3-D conv as a linear map over flattened
C x T x P x P patches), transformer blocks with 2-D rotary attention restricted to the same image
(or the same window, for 2.5-VL's windowed blocks), the 2x2 patch merger, and for Qwen3-VL the
deepstack mergers whose features are added to early LM layers.
Shapes: P = padded patch count, M = P / merge^2 merged tokens, D_v = vision width, D = LM width.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hopchain_jax.models.config import QwenVLConfig, VisionConfig
from hopchain_jax.models.families import ModelFamily
from hopchain_jax.models.image_processor import num_image_tokens
from hopchain_jax.models.attention import attention
from hopchain_jax.models.layers import ACTIVATIONS, GatedMLP, LayerNorm, Linear, RMSNorm, apply_rope
from hopchain_jax.models.stack import scan, stack


@dataclasses.dataclass
class VisionInputs:
    """Arrays for one jitted tower call (all numpy, padded to `num_patches`).

    pixel_values  float [P, patch_dim]   patches in processing order (window order for 2.5-VL)
    rot_pos       int32 [P, 2]           (row, col) of each patch in its image, for the 2-D rope
    full_segment  int32 [P]              attention group of full-attention blocks (image/frame); pads -1
    window_segment int32 [P]             window of each patch (2.5-VL; each window padded to window_patches
                                         rows, so windowed blocks attend within rows of a [P / Wp, Wp]
                                         reshape); pads -1
    pos_index     int32 [P, 4]           Qwen3-VL: taps into the learned position table
    pos_weight    float32 [P, 4]         Qwen3-VL: bilinear weights of those taps
    out_index     int32 [M]              image-token order -> merged row of the tower (undoes the window
                                         layout); M = P / merge^2, entries past num_tokens are padding
    num_tokens    int                    valid merged tokens (the rest is padding)
    """

    pixel_values: np.ndarray
    rot_pos: np.ndarray
    full_segment: np.ndarray
    window_segment: np.ndarray
    pos_index: np.ndarray
    pos_weight: np.ndarray
    out_index: np.ndarray
    num_tokens: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "num_tokens"}


def _rot_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
    """Per-patch (row, col) in merge-block order, as the processor lays patches out."""
    out = [np.zeros((0, 2), np.int64)]
    for t, h, w in grid_thw.tolist():
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
    return np.concatenate(out).astype(np.int32)


def _window_index(grid_thw: np.ndarray, cfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(merged-unit permutation into window order, window id of each merged unit in that order)."""
    merge = cfg.spatial_merge_size
    win = cfg.window_size // merge // cfg.patch_size
    index, window_ids, offset, next_window = [], [], 0, 0
    for t, h, w in grid_thw.tolist():
        lh, lw = h // merge, w // merge
        idx = np.arange(t * lh * lw).reshape(t, lh, lw)
        ph, pw = (win - lh % win) % win, (win - lw % win) % win
        padded = np.pad(idx, ((0, 0), (0, ph), (0, pw)), constant_values=-1)
        nh, nw = (lh + ph) // win, (lw + pw) // win
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, win * win)
        for wid, row in enumerate(padded):
            keep = row[row >= 0]
            index.append(keep + offset)
            window_ids.append(np.full(len(keep), next_window + wid))
        offset += t * lh * lw
        next_window += t * nh * nw
    return np.concatenate(index), np.concatenate(window_ids)


def _bilinear_taps(grid_thw: np.ndarray, side: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL: resample the side x side learned table to each image grid (align_corners=True)."""
    idx_all, w_all = [np.zeros((0, 4), np.int64)], [np.zeros((0, 4))]
    for t, h, w in grid_thw.tolist():
        rows = _rot_positions(np.array([[1, h, w]]), merge)
        r = rows[:, 0] * (side - 1) / max(h - 1, 1)
        c = rows[:, 1] * (side - 1) / max(w - 1, 1)
        r0, c0 = np.floor(r), np.floor(c)
        fr, fc = r - r0, c - c0
        r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
        r1, c1 = np.minimum(r0 + 1, side - 1), np.minimum(c0 + 1, side - 1)
        idx = np.stack([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1], -1)
        wts = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], -1)
        idx_all.append(np.tile(idx, (t, 1)))
        w_all.append(np.tile(wts, (t, 1)))
    return np.concatenate(idx_all).astype(np.int32), np.concatenate(w_all).astype(np.float32)


def vision_bucket(num_patches: int, multiple: int, minimum: int = 64) -> int:
    """Padded patch count: the next power of two (>= minimum), rounded up to a multiple of `multiple`."""
    size = max(minimum, 1 << (int(num_patches) - 1).bit_length())
    return -(-size // multiple) * multiple


def window_patches(config: QwenVLConfig) -> int:
    """Patches per (padded) attention window of Qwen2.5-VL's windowed blocks; 0 for towers without."""
    if not config.family.window_attention:
        return 0
    cfg = config.vision
    win = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
    return win * win * cfg.spatial_merge_size ** 2


def _layout(grid_thw: np.ndarray, config: QwenVLConfig) -> tuple[np.ndarray, int]:
    """(slot of each merge unit in processor order, slots needed) in the tower's packed layout.

    Qwen2.5-VL: units sit in window order and every window is padded to window_patches / merge^2 unit
    slots, so a windowed block is attention over [windows, window_patches] (no [P, P] mask). Qwen3-VL:
    units in processor order, no gaps."""
    units = int(np.prod(grid_thw, axis=1).sum()) // config.vision.spatial_merge_size ** 2
    if not config.family.window_attention or units == 0:
        return np.arange(units), units
    per_window = window_patches(config) // config.vision.spatial_merge_size ** 2
    order, window_ids = _window_index(grid_thw, config.vision)
    first = np.searchsorted(window_ids, window_ids)            # window_ids are sorted: first unit of each window
    slot = np.empty(units, np.int64)
    slot[order] = window_ids * per_window + (np.arange(units) - first)
    n_windows = int(window_ids.max()) + 1 if units else 0
    return slot, n_windows * per_window


def patch_bucket(num_patches: int, config: QwenVLConfig) -> int:
    """The padded patch count (a bucket prepare_vision_inputs accepts) holding num_patches patches."""
    return vision_bucket(num_patches, _patch_multiple(config))


def _patch_multiple(config: QwenVLConfig) -> int:
    """Padded patch counts are multiples of this: a merge unit, and a whole window where there are windows."""
    return max(config.vision.spatial_merge_size ** 2, window_patches(config))


def padded_patches(grid_thw, config: QwenVLConfig) -> int:
    """The default padded patch count (bucket) of prepare_vision_inputs for these images."""
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    _, slots = _layout(grid_thw, config)
    return patch_bucket(slots * config.vision.spatial_merge_size ** 2, config)


def prepare_vision_inputs(pixel_values: np.ndarray, grid_thw: np.ndarray, config: QwenVLConfig,
                          num_patches: int | None = None) -> VisionInputs:
    """Pack images (processor output) for the tower. num_patches: pad target (default: padded_patches;
    a larger one lets several batches share one shape)."""
    cfg = config.vision
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    pixel_values = np.asarray(pixel_values)
    merge_unit = cfg.spatial_merge_size ** 2
    total = int(np.prod(grid_thw, axis=1).sum())
    if pixel_values.shape != (total, cfg.patch_dim):
        raise ValueError(f"pixel_values has shape {pixel_values.shape}, but image_grid_thw {grid_thw.tolist()} "
                         f"needs ({total}, {cfg.patch_dim}); preprocess images with this model's processor")
    slot, slots = _layout(grid_thw, config)
    need = padded_patches(grid_thw, config)
    padded = num_patches or need
    multiple = _patch_multiple(config)
    if padded < slots * merge_unit or padded % multiple:
        raise ValueError(f"num_patches {padded} must be >= {slots * merge_unit} and a multiple of {multiple} "
                         f"(padded_patches gives {need})")
    rot = _rot_positions(grid_thw, cfg.spatial_merge_size)
    frames = np.repeat(np.arange(int(grid_thw[:, 0].sum())), np.repeat(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0]))
    if config.family.learned_pos_embed:
        side = int(cfg.num_position_embeddings ** 0.5)
        pos_index, pos_weight = _bilinear_taps(grid_thw, side, cfg.spatial_merge_size)
    else:
        pos_index, pos_weight = np.zeros((total, 4), np.int32), np.zeros((total, 4), np.float32)
    # patch p of unit u goes to row slot[u] * merge_unit + (p % merge_unit); other rows are padding
    rows = (slot[:, None] * merge_unit + np.arange(merge_unit)).reshape(-1)

    def place(a, fill=0, dtype=None):
        out = np.full((padded,) + a.shape[1:], fill, dtype or a.dtype)
        out[rows] = a
        return out

    full = place(frames.astype(np.int32), -1)
    per_window = window_patches(config)
    window = np.where(full >= 0, np.arange(padded) // max(per_window, 1), -1).astype(np.int32) \
        if per_window else full.copy()
    m_pad = padded // merge_unit
    unused = np.setdiff1d(np.arange(m_pad), slot)
    out_index = np.concatenate([slot, unused]).astype(np.int32)   # image-token order -> merged row
    return VisionInputs(place(pixel_values, 0, np.float32), place(rot), full, window, place(pos_index),
                        place(pos_weight), out_index, len(slot))


def image_tokens(grid_thw, config: QwenVLConfig) -> int:
    """LM tokens of images with these grids: t*h*w / merge^2, summed."""
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    return int(num_image_tokens(grid, config.vision.spatial_merge_size).sum())


def pack_images(entries: Sequence[tuple[np.ndarray, np.ndarray] | None],
                config: QwenVLConfig, num_patches: int | None = None) -> tuple[VisionInputs | None, list[int]]:
    """Pack the images of several prompts, each once: (tower inputs or None, per entry the first feature
    row of its image tokens). entries: (pixel_values, image_grid_thw) per prompt, None for text-only.
    num_patches: pad target (default: the bucket of these images)."""
    starts, offset = [], 0
    for entry in entries:
        starts.append(offset)
        if entry is not None:
            offset += image_tokens(entry[1], config)
    present = [e for e in entries if e is not None]
    if not present:
        return None, starts
    pixels = np.concatenate([np.asarray(p) for p, _ in present])
    grid = np.concatenate([np.asarray(g).reshape(-1, 3) for _, g in present])
    return prepare_vision_inputs(pixels, grid, config, num_patches), starts


def fill_image_index(input_ids: np.ndarray, row_starts: Sequence[int], config: QwenVLConfig) -> np.ndarray:
    """int32 [B, T]: feature row of each <|image_pad|> (row r's image tokens take rows row_starts[r], ...)."""
    index = np.zeros(input_ids.shape, np.int32)
    for r, start in enumerate(row_starts):
        is_img = input_ids[r] == config.image_token_id
        index[r, is_img] = start + np.arange(is_img.sum())
    return index


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True, dtype=dtype, rngs=rngs)
        self.proj = Linear(cfg.hidden_size, cfg.hidden_size, bias=True, dtype=dtype, rngs=rngs)
        self.heads = cfg.num_heads

    def __call__(self, x, cos, sin, segment, window: int = 0, impl: str = "flash"):
        """x [P, D]; segment int32 [P] (-1 = padding). window > 0: attend only within consecutive rows
        of `window` patches (the padded windows), as a batch of [P / window, window] attentions."""
        p, d = x.shape
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(p, 3, self.heads, d // self.heads), 1, 0)
        q = apply_rope(q.astype(jnp.float32), cos, sin).astype(x.dtype)
        k = apply_rope(k.astype(jnp.float32), cos, sin).astype(x.dtype)
        groups = p // window if window else 1
        shape = (groups, p // groups, self.heads, d // self.heads)
        seg = segment.reshape(groups, -1)
        out = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), q_segment=seg, kv_segment=seg,
                        impl=impl, block_k=min(p // groups, 512))
        return self.proj(out.reshape(p, d))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, fam: ModelFamily, *, dtype, rngs: nnx.Rngs):
        norm = {"rms": RMSNorm, "layer": LayerNorm}[fam.vision_norm]
        self.norm1 = norm(cfg.hidden_size, eps=1e-6, dtype=dtype)
        self.norm2 = norm(cfg.hidden_size, eps=1e-6, dtype=dtype)
        if fam.vision_mlp == "gated":
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, bias=True, dtype=dtype,
                                rngs=rngs)
        else:
            self.mlp = PlainMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, dtype=dtype, rngs=rngs)
        self.attn = VisionAttention(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segment, window: int = 0, impl: str = "flash"):
        x = x + self.attn(self.norm1(x), cos, sin, segment, window, impl)
        return x + self.mlp(self.norm2(x))


class PlainMLP(nnx.Module):
    """linear_fc2(act(linear_fc1(x))) — Qwen3-VL's vision MLP."""

    def __init__(self, dim: int, hidden: int, *, act: str, dtype, rngs: nnx.Rngs):
        self.linear_fc1 = Linear(dim, hidden, bias=True, dtype=dtype, rngs=rngs)
        self.linear_fc2 = Linear(hidden, dim, bias=True, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.linear_fc2(ACTIVATIONS[self.act](self.linear_fc1(x)))


class PatchMerger(nnx.Module):
    """Groups 2x2 neighbouring patches (already adjacent in processing order) into one LM token.

    2.5-VL: ln_q (RMSNorm) -> mlp.0 -> GELU -> mlp.2. Qwen3-VL: norm (LayerNorm, before or, for the
    deepstack mergers, after the 2x2 shuffle) -> linear_fc1 -> GELU -> linear_fc2.
    """

    def __init__(self, cfg: VisionConfig, fam: ModelFamily, *, postshuffle: bool = False, dtype, rngs: nnx.Rngs):
        unit = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.kind, self.unit, self.postshuffle = fam.merger, unit, postshuffle
        if self.kind == "mlp":
            self.ln_q = RMSNorm(cfg.hidden_size, eps=1e-6, dtype=dtype)
            self.mlp = nnx.List([Linear(unit, unit, bias=True, dtype=dtype, rngs=rngs),
                                 Linear(unit, cfg.out_hidden_size, bias=True, dtype=dtype, rngs=rngs)])
        else:
            self.norm = LayerNorm(unit if postshuffle else cfg.hidden_size, eps=1e-6, dtype=dtype)
            self.linear_fc1 = Linear(unit, unit, bias=True, dtype=dtype, rngs=rngs)
            self.linear_fc2 = Linear(unit, cfg.out_hidden_size, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        gelu = ACTIVATIONS["gelu"]
        if self.kind == "mlp":
            x = self.ln_q(x).reshape(-1, self.unit)
            return self.mlp[1](gelu(self.mlp[0](x)))
        x = self.norm(x.reshape(-1, self.unit)) if self.postshuffle else self.norm(x).reshape(-1, self.unit)
        return self.linear_fc2(gelu(self.linear_fc1(x)))


class VisionTower(nnx.Module):
    """blocks: one stacked VisionBlock ([depth, ...] parameters, run by lax.scan)."""

    def __init__(self, config: QwenVLConfig, *, dtype, rngs: nnx.Rngs):
        cfg = self.cfg = config.vision
        fam = config.family
        self.learned_pos_embed, self.deepstack = fam.learned_pos_embed, fam.deepstack
        self.window = window_patches(config)
        self.patch_embed = Linear(cfg.patch_dim, cfg.hidden_size, bias=fam.patch_embed_bias, dtype=dtype, rngs=rngs)
        if fam.learned_pos_embed:
            self.pos_embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (cfg.num_position_embeddings,
                                                                                   cfg.hidden_size), dtype))
        if fam.deepstack:
            self.deepstack_merger_list = nnx.List([
                PatchMerger(cfg, fam, postshuffle=True, dtype=dtype, rngs=rngs)
                for _ in cfg.deepstack_visual_indexes])
        self.blocks = stack(lambda r: VisionBlock(cfg, fam, dtype=dtype, rngs=r), cfg.depth, rngs)
        self.merger = PatchMerger(cfg, fam, dtype=dtype, rngs=rngs)

    def __call__(self, inputs: dict[str, jax.Array], *, dtype=None, remat: str = "none",
                 impl: str = "flash") -> tuple[jax.Array, list[jax.Array]]:
        """Returns (tokens [M, D], deepstack features: list of [M, D]) in image-token order, in `dtype`
        (default: the parameters' dtype)."""
        dtype = dtype or self.patch_embed.kernel[...].dtype
        x = self.patch_embed(inputs["pixel_values"].astype(dtype))
        if self.learned_pos_embed:
            table = self.pos_embed[...]
            x = x + jnp.einsum("pk,pkd->pd", inputs["pos_weight"].astype(jnp.float32),
                               table[inputs["pos_index"]].astype(jnp.float32)).astype(x.dtype)
        half = self.cfg.head_dim // 2
        inv_freq = 1.0 / (self.cfg.rope_theta ** (np.arange(0, half, 2, dtype=np.float32) / half))
        freqs = inputs["rot_pos"][..., None].astype(jnp.float32) * inv_freq  # [P, 2, hd/4]
        freqs = freqs.reshape(freqs.shape[0], -1)  # [P, hd/2]: rows then cols
        cos, sin = jnp.cos(jnp.concatenate([freqs, freqs], -1)), jnp.sin(jnp.concatenate([freqs, freqs], -1))
        full_seg, window_seg = inputs["full_segment"], inputs["window_segment"]
        windowed = np.asarray([self.window > 0 and i not in self.cfg.fullatt_block_indexes
                               for i in range(self.cfg.depth)])

        def body(block, x, is_windowed):
            if not windowed.any():
                return block(x, cos, sin, full_seg, 0, impl), None
            if windowed.all():
                return block(x, cos, sin, window_seg, self.window, impl), None
            return jax.lax.cond(is_windowed, lambda x: block(x, cos, sin, window_seg, self.window, impl),
                                lambda x: block(x, cos, sin, full_seg, 0, impl), x), None

        # one scan between consecutive deepstack taps (Qwen3-VL), else one scan over all blocks
        deepstack, start = [], 0
        taps = set(self.cfg.deepstack_visual_indexes) if self.deepstack else set()
        for i in sorted(taps | {self.cfg.depth - 1}):
            x, _ = scan(self.blocks, body, x, jnp.asarray(windowed[start:i + 1]), remat=remat, start=start, stop=i + 1)
            start = i + 1
            if i in taps:
                merger = self.deepstack_merger_list[self.cfg.deepstack_visual_indexes.index(i)]
                deepstack.append(merger(x)[inputs["out_index"]])
        return self.merger(x)[inputs["out_index"]], deepstack
