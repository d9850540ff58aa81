"""The fast forward path: model.py's function, computed with the speed machinery kept out of it.

Each function here replaces the reference function of the same name (read model.py first; the
dimension legend and the parameter layout are drawn there); `bert` and the per-row blocks keep its
signature, while `self_attention`, `layer` and `encoder` take packed (N, D) rows and their runs of
sequences (`packed`) where the reference takes (B, S, D) and a mask. tests/test_fast.py holds the
two paths together (1e-13 in float64, the float32 tolerances in float32). What differs, each measured in benchmarks/:

- each core owns a share of the token rows: it multiplies them with BLAS single-threaded, then does
  their bias, residual, GELU and LayerNorm right away, ROWS_BLOCK rows at a time (`layer`). So the
  elementwise work runs on every core, and no core waits for the other between two matmuls: one
  core's GELU overlaps the other's matmul. Attention takes whole (sequence, head) blocks instead.
  With several sequences, each core takes whole sequences and runs every layer on them (`encoder`):
  no core waits for another between layers either, nor, when a caller runs the groups of many
  batches as one list (`sequence_groups`, batching.embed_rows), between batches. Below FEW_ROWS
  token rows (a query, a few texts, a passage) the forward is bound by reading the weights, and
  that layout would have every core stream every weight matrix: there each core takes a share of
  the heads and of the FFN's intermediate columns instead, and reads only its share of each weight
  (`layer_by_heads`); small weights (MiniLM's) and a single query leave each projection to gemm.py,
  whose BLAS calls split the output between the BLAS's own threads (for a query's large weights on
  OpenBLAS's SkylakeX kernel, its small-kernel column blocks between bge_ref's threads:
  gemm.small_blocks), and the rest runs in the calling thread;
- with cls_only (encode with [CLS] pooling), the last layer computes Q, the attention output, the
  FFN and the LayerNorms for the [CLS] rows alone (K and V over every row): exact, row by row;
- every projection is one 2-D matmul over many tokens (a (B, S, D) @ (D, F) matmul is a loop of B
  smaller BLAS calls, 2-3x slower), its bias added in place; its input dimension is summed in chunks
  of 128, 64 for a few rows (gemm.chunk_length), which keeps the float32 error under transformers' own on any OpenBLAS kernel;
- LayerNorm normalizes float32 in float64 and rounds once (`layer_norm`): the rest of that error;
- float16-stored weights are widened to float32 once per layer, just before its matmuls
  (`as_compute`), so only one layer's float32 copies exist at a time;
- attention normalizes after @ V and skips the max shift while exp stays in range (`attention`);
- the float32 GELU is computed in float32, within 4 ulp of |x| (erf.gelu_fast), not in float64 to
  1 ulp of its result: a quarter of the work;
- LayerNorm and the FFN write into the buffers they already own instead of allocating new ones;
- padding is never computed: the real tokens of a padded batch are packed end to end (`packed`),
  every row-wise step runs on them alone, and attention runs per run of equal-length sequences,
  so no key is padding and no mask is needed. Its rows of the result are zero (the reference's are
  whatever padding computes to; neither is read, as pooling and verify read real tokens only).
  A server batch of mixed lengths costs its real tokens, not batch x longest text.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from . import gemm, threads
from .config import BertConfig
from .erf import gelu_fast
from .errors import InputError

__all__ = ["linear", "layer_norm", "attention", "self_attention", "attention_output", "intermediate", "output",
           "layer", "layer_by_heads", "cls_layer", "encoder", "bert", "embeddings", "packed", "unpacked",
           "sequence_groups"]


def linear(x, w, b, out=None, whole=None):
    """x @ w + b as one 2-D matmul over every token, K summed in short chunks (gemm.py: at most the
    rounding error of torch's matmul), into `out` if given. The output starts as the bias and BLAS
    adds the products into it, as torch's addmm does: no pass of its own for the bias. (Starting
    from bias + residual would save one more, but the products would then be summed onto the
    residual's large values, rounding at their scale: 1.25x transformers' max error on MiniLM.)
    `whole`: the size of the weight matrix w is a part of, for gemm's chunk length (gemm.matmul)."""
    x2 = x.reshape(-1, x.shape[-1])                          # (N, in)
    y = np.empty((len(x2), w.shape[1]), x.dtype) if out is None else out  # (N, out)
    y[...] = b
    gemm.matmul(x2, as_compute(w, x), out=y, accumulate=True, whole=whole)
    return y.reshape(*x.shape[:-1], -1)                      # (..., out)


def layer_norm(x, g, b, eps, out=None):
    """LayerNorm over the last axis (biased variance, as torch), into `out` (which may be x) or a new array.

    float32 is normalized in float64 and rounded once. In float32 the four steps (center, divide,
    scale, shift) each round, up to ~3 ulp at BERT's outlier dimensions (|x| of 5 to 10), where a
    layer's largest errors sit; torch's fused kernel rounds less, and with these it is our error that
    is smaller (tests/test_fast.py, within 1.2x transformers' max and rms). It runs LN_BLOCK_BYTES
    of float64 rows at a time, so its seven passes stay in cache."""
    D = x.shape[-1]
    res = out if out is not None and out.flags.c_contiguous else np.empty(x.shape, x.dtype)  # (..., D)
    xs, rows = x.reshape(-1, D), res.reshape(-1, D)          # (N, D) views (xs a copy if x is strided)
    n = max(1, LN_BLOCK_BYTES // (8 * D))                    # rows per block
    buf = np.empty((min(n, len(xs)), D))                     # (n, D) float64
    for s in range(0, len(xs), n):
        y = buf[:len(xs[s:s + n])]                           # (n, D)
        np.copyto(y, xs[s:s + n])                            # a copy: x is left as it was
        y -= np.add.reduce(y, axis=-1, keepdims=True) / D    # the mean (y.mean's steps without its Python)
        var = np.einsum("...d,...d->...", y, y)[..., None] / D  # (n, 1) one pass, no squared copy
        y *= 1.0 / np.sqrt(var + eps)
        y *= g
        y += b
        np.copyto(rows[s:s + n], y, casting="same_kind")     # the one rounding (an add into float32 casts
                                                             # in buffered steps: 1.5x this add and copy)
    if out is not None and res is not out:
        out[...] = res
    return res if out is None else out                       # (..., D)


def embeddings(input_ids, token_type_ids, word, position, token_type, ln, eps):
    """BertEmbeddings, as model.embeddings, with this module's LayerNorm."""
    S = input_ids.shape[1]
    x = word[input_ids] + position[:S] + token_type[token_type_ids]  # (B, S, D)
    return layer_norm(x, **ln, eps=eps, out=x)               # (B, S, D)


def attention(q, k, v, mask_bias, shift=False, scale=None):
    """softmax(q k^T / sqrt(Dh) + mask) v for a stack of heads; q, k, v (b, h, S, Dh).

    Three passes over the (S, S) scores (scale, exp, sum) instead of six: softmax(s) @ v =
    (exp(s) @ v) / sum(exp(s)), so the division touches the (S, Dh) result, not the scores. And
    softmax is unchanged by a shift of s, so the usual shift by the row max (as HF) only guards exp
    against over- and underflow; it is skipped while every row sum is well inside the dtype's range
    (scores within about +-46), and the block is redone with it otherwise. `scale` is 1/sqrt(Dh)
    unless given (1.0 when q comes already scaled).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(0, 1, 3, 2)                     # (b, h, S, S)
    if scale != 1.0:
        scores *= scale
    if mask_bias is not None:
        scores += mask_bias                                  # (b, h, S, S) padded keys -> -inf-ish
    if shift:
        scores -= scores.max(axis=-1, keepdims=True)         # (b, h, S, S) row max 0: exp(s) <= 1
    with np.errstate(over="ignore", under="ignore"):        # caught just below
        e = np.exp(scores, out=scores)                       # (b, h, S, S) unnormalized probabilities
    total = e @ np.ones((e.shape[-1], 1), e.dtype)           # (b, h, S, 1) row sums: BLAS reads e once,
                                                             # 2.6x faster than e.sum's reduction (MiniLM heads)
    if not shift and not ((total > 1e-20) & (total < 1e20)).all():
        return attention(q, k, v, mask_bias, shift=True, scale=scale)  # exp under- or overflowed somewhere
    ctx = e @ v                                              # (b, h, S, Dh)
    ctx /= total
    return ctx                                               # (b, h, S, Dh)


def self_attention(x, runs, qkv, n_head):
    """BertSelfAttention on packed rows: x (N, D) holds the real tokens of every sequence, end to end,
    and `runs` lists them as (first row, sequences, length) runs of equal-length sequences (`packed`).
    Each core projects its own rows, then takes whole blocks of heads; no key is ever padding.
    It scales q by 1/sqrt(Dh) instead of the scores: q is half their size at 128 tokens (bge-large),
    a quarter (MiniLM), less at 512. Exact when 1/sqrt(Dh) is a power of two (bge-large: 1/8);
    otherwise it rounds once in q where it rounded once in the scores (MiniLM: within 1.2x
    transformers' error, tests/test_fast.py)."""
    N, D = x.shape
    qkv = widened(qkv, x)                                    # float16 weights widened once
    proj = np.empty((N, 3 * D), x.dtype)                     # (N, 3D)
    ctx = np.empty((N, D), x.dtype)                          # (N, D) heads side by side, as the projection wants

    def project(r):
        linear(x[r], **qkv, out=proj[r])                     # (n, 3D)
        proj[r, :D] *= 1.0 / math.sqrt(D // n_head)          # (n, D) the q columns

    def block(start, b, S, heads):
        r = slice(start, start + b * S)
        q, k, v = proj[r].reshape(b, S, 3, n_head, D // n_head).transpose(2, 0, 3, 1, 4)  # 3 x (b, H, S, Dh)
        out = ctx[r].reshape(b, S, n_head, D // n_head).transpose(0, 2, 1, 3)  # (b, H, S, Dh) view
        out[:, heads] = attention(q[:, heads], k[:, heads], v[:, heads], None, scale=1.0)  # q is scaled

    if N < FEW_ROWS:                                         # gemm shares each weight matrix between the cores
        project(slice(0, N))
        for args in attention_blocks(runs, n_head, x.itemsize, 1):
            block(*args)                                     # a few rows' attention: less than waking a thread
        return ctx                                           # (N, D)
    with threads.split() as parts:
        threads.run(project, _rows(N, parts), parts > 1)
        threads.run(block, attention_blocks(runs, n_head, x.itemsize, parts), parts > 1)
    return ctx                                               # (N, D)


def attention_output(ctx, x, dense, ln, eps):
    """BertSelfOutput: projection, residual and LayerNorm, in one buffer."""
    y = linear(ctx, **dense)                                 # (..., D)
    y += x
    return layer_norm(y, **ln, eps=eps, out=y)               # (..., D)


def intermediate(x, dense):
    """BertIntermediate: the GELU in place, within 4 ulp of |x| in float32 (erf.gelu_fast)."""
    h = linear(x, **dense)                                   # (..., F)
    return gelu_fast(h, out=h)                               # (..., F) in place


def output(h, x, dense, ln, eps):
    """BertOutput: projection, residual and LayerNorm, in one buffer."""
    y = linear(h, **dense)                                   # (..., D)
    y += x
    return layer_norm(y, **ln, eps=eps, out=y)               # (..., D)


def layer(x, runs, attn, attn_out, inter, out, n_head, eps):
    """BertLayer on packed rows (N, D): self-attention, then every row's attention output and
    feed-forward block on the core that owns the row, ROWS_BLOCK rows at a time. Nothing waits for
    another core between the matmuls: one core's GELU or LayerNorm runs while the other multiplies."""
    if by_heads(x, inter):                                   # each core reads its own share of every weight
        return layer_by_heads(x, runs, attn, attn_out, inter, out, n_head, eps)
    ctx = self_attention(x, runs, **attn, n_head=n_head)     # (N, D)
    attn_out, out = (dict(p, dense=widened(p["dense"], x)) for p in (attn_out, out))  # once, not per block
    inter = dict(inter, dense=widened(inter["dense"], x))
    y = np.empty_like(x)                                     # (N, D)

    def rows(r):
        for s in range(r.start, r.stop, ROWS_BLOCK):
            t = slice(s, min(s + ROWS_BLOCK, r.stop))
            a = attention_output(ctx[t], x[t], **attn_out, eps=eps)  # (n, D)
            y[t] = output(intermediate(a, **inter), a, **out, eps=eps)  # (n, D)

    if len(x) < FEW_ROWS:                                    # gemm shares each weight matrix between the cores
        rows(slice(0, len(x)))
        return y
    with threads.split() as parts:
        threads.run(rows, _rows(len(x), parts), parts > 1)
    return y                                                 # (N, D)


def layer_by_heads(x, runs, attn, attn_out, inter, out, n_head, eps, cls_only=False):
    """layer() for a few rows of large weights (`by_heads`), or cls_layer() with cls_only: the
    weights split between the cores instead of the rows. Each core takes a share of the heads (their
    Q, K and V columns, their attention, their rows of the attention output's weight) and of the
    FFN's intermediate columns (their GELU, their rows of the output weight), and sums its part of
    each block's output projection over its own share of K. So every weight is read once, by one core,
    the GELU and attention run on every core, and the cores meet once per block (the partial sums
    added, the residual and LayerNorm) where gemm's BLAS threads meet after every chunk. BLAS stays
    single-threaded throughout (threads.split): OpenBLAS's threads, if they ran, would busy-wait
    after their last call, on the core the next forward's parts need. The split of K falls where
    gemm's groups already do at bge-large's sizes (512 of 1024; 2048 of 4096: the same group sums
    in another order). Measured (alternating A/Bs of encode() against gemm's BLAS threads, bge-large
    size, Intel Xeon, medians of 16-30 rounds, three runs): 4 queries 0.89-0.97x the time, one
    passage 0.93-1.01x, one query 0.97-1.03x (noise; on the Haswell kernel 1.08-1.10x, so a
    single query no longer comes here: `by_heads`).
    (n_rows, D), or (n_sequences, D) with cls_only."""
    N, D = x.shape
    Dh = D // n_head
    first = cls_rows(runs) if cls_only else slice(None)
    xq = x[first]                                            # (n, D) the rows this layer outputs
    qkv, o = widened(attn["qkv"], x), widened(attn_out["dense"], x)
    w1, w2 = widened(inter["dense"], x), widened(out["dense"], x)

    def heads_part(hs):
        nh = hs.stop - hs.start
        c = slice(hs.start * Dh, hs.stop * Dh)               # this part's columns of Q (and of K, V past D)
        q = linear(xq, qkv["w"][:, c], qkv["b"][c], whole=qkv["w"].size)  # (n, h Dh) chunked as the whole w
        q *= 1.0 / math.sqrt(Dh)                             # as self_attention scales q
        kv = np.empty((N, 2, nh * Dh), x.dtype)              # (N, 2, h Dh)
        for j in (1, 2):
            cj = slice(j * D + c.start, j * D + c.stop)
            linear(x, qkv["w"][:, cj], qkv["b"][cj], out=kv[:, j - 1], whole=qkv["w"].size)
        ctx = attend_runs(q, kv, runs, nh, cls_only)         # (n, h Dh) its heads side by side
        return _partial(ctx, o, c, hs.start == 0)           # (n, D) its share of the attention output

    def ffn_part(f, a):
        h = linear(a, w1["w"][:, f], w1["b"][f], whole=w1["w"].size)  # (n, f) its intermediate columns
        gelu_fast(h, out=h)                                  # as intermediate(), in place
        return _partial(h, w2, f, f.start == 0)              # (n, D)

    with threads.split() as parts:
        a = _summed(threads.run(heads_part, [(hs,) for hs in threads.chunks(n_head, parts)], parts > 1))
        a += xq
        layer_norm(a, **attn_out["ln"], eps=eps, out=a)      # (n, D) attention_output
        y = _summed(threads.run(ffn_part, [(f, a) for f in threads.chunks(w1["w"].shape[1], parts)], parts > 1))
    y += a
    return layer_norm(y, **out["ln"], eps=eps, out=y)        # (n, D) output


def by_heads(x, inter):
    """True where layer_by_heads runs: from BY_HEADS_ROWS up to FEW_ROWS token rows, for weights of
    BY_HEADS_WEIGHTS elements or more (the FFN's first, the largest with qkv). Smaller weights stay
    in cache and their matmuls are short, and so are a single query's: there the pool's meetings
    cost more than gemm's BLAS threads."""
    return BY_HEADS_ROWS <= len(x) < FEW_ROWS and inter["dense"]["w"].size >= BY_HEADS_WEIGHTS


def _partial(h, dense, k, with_bias):
    """h @ dense["w"][k] (n, D): one core's share of K of a projection, the bias in the first share;
    summed in chunks as the whole weight would be (gemm.chunk_length)."""
    if with_bias:
        return linear(h, dense["w"][k], dense["b"], whole=dense["w"].size)
    return gemm.matmul(h, dense["w"][k], whole=dense["w"].size)


def _summed(parts):
    """The partial sums added, in order, into the first."""
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total


def cls_self_attention(x, runs, qkv, n_head):
    """self_attention for each sequence's first row ([CLS]) only: K and V over every row, Q for the
    first rows alone (their own columns of the fused weight). (n_sequences, D), in batch order."""
    N, D = x.shape
    qkv, first = widened(qkv, x), cls_rows(runs)
    kv = linear(x, qkv["w"][:, D:], qkv["b"][D:])           # (N, 2D)
    q = linear(x[first], qkv["w"][:, :D], qkv["b"][:D])      # (n, D)
    q *= 1.0 / math.sqrt(D // n_head)
    return attend_runs(q, kv.reshape(N, 2, D), runs, n_head, cls_only=True)  # (n, D)


def attend_runs(q, kv, runs, n_head, cls_only=False):
    """Attention of q's rows over the keys and values of kv (N, 2, H Dh), run by run (`packed`): q
    holds every row (n = N), or each sequence's first row alone with cls_only (n = sequences), and
    is already scaled. (n, H Dh), heads side by side."""
    Dh = q.shape[1] // n_head
    ctx, i = np.empty_like(q), 0                             # (n, H Dh)
    for start, B, S in runs:
        L = 1 if cls_only else S                             # query rows per sequence
        k, v = kv[start:start + B * S].reshape(B, S, 2, n_head, Dh).transpose(2, 0, 3, 1, 4)  # 2 x (B, H, S, Dh)
        qb = q[i:i + B * L].reshape(B, L, n_head, Dh).transpose(0, 2, 1, 3)  # (B, H, L, Dh)
        ctx[i:i + B * L] = attention(qb, k, v, None, scale=1.0).transpose(0, 2, 1, 3).reshape(B * L, -1)
        i += B * L
    return ctx                                               # (n, H Dh)


def cls_layer(x, runs, attn, attn_out, inter, out, n_head, eps):
    """layer() for each sequence's first row ([CLS]) only, (n_sequences, D): every step after K and V
    is row by row, so those rows are exactly what the whole layer gives them."""
    if by_heads(x, inter):
        return layer_by_heads(x, runs, attn, attn_out, inter, out, n_head, eps, cls_only=True)
    ctx = cls_self_attention(x, runs, **attn, n_head=n_head)  # (n, D)
    a = attention_output(ctx, x[cls_rows(runs)], **attn_out, eps=eps)  # (n, D)
    return output(intermediate(a, **inter), a, **out, eps=eps)  # (n, D)


def cls_rows(runs):
    """The packed row of each sequence's first token, in batch order."""
    return np.concatenate([start + S * np.arange(B) for start, B, S in runs])


def encoder(x, runs, layers, config: BertConfig, output_hidden_states=False, cls_only=False):
    """BertEncoder, as model.encoder, on packed rows (N, D). With cls_only (no hidden states), the
    last layer computes each sequence's first row only: (n_sequences, D).

    With many rows in several sequences, each core runs every layer on its own sequences
    (`sequence_parts`): no core waits for another between layers, and the cores drift out of step,
    so one's GELU and LayerNorm (short NumPy calls, each ending in a wait for the GIL while the other
    core's thread holds it) meet the other's matmuls rather than its own GELU."""
    parts = own_sequences(runs, len(x), layers, x.dtype)
    if parts:
        done = threads.run_split(lambda rows, r: _layers(x[rows], r, layers, config, output_hidden_states, cls_only),
                                 parts)
        states = [np.concatenate(s) for s in zip(*(d[1] for d in done))] if output_hidden_states else None
        return np.concatenate([d[0] for d in done]), states  # (N, D) or (n_sequences, D)
    return _layers(x, runs, layers, config, output_hidden_states, cls_only)


def own_sequences(runs, n_rows, layers, dtype):
    """encoder()'s rule: the sequence parts (`sequence_parts`) each core runs every layer on, or []
    where each layer is shared between the cores instead: fewer than FEW_ROWS rows, sequences that
    do not split evenly, float16 weights (each core would widen them for itself), or one thread."""
    if n_rows < FEW_ROWS or not _same_dtype(layers, dtype) or not threads.can_split():
        return []
    parts = sequence_parts(runs, threads.THREADS)
    return parts if len(parts) > 1 else []


def sequence_groups(attention_mask, params) -> list[slice]:
    """The batch's sequences, as ranges of its rows in order, that bert() would give each core (every
    layer on its own sequences: `encoder`), or [] where it would not split the batch so. bert() on
    one group's rows alone computes them bit for bit as bert() on the whole batch does, so a caller
    may run the groups of many batches as one list of parts, and no core waits for the other at the
    end of each batch (batching.embed_rows). Every sequence is in one group."""
    lengths = np.asarray(attention_mask).astype(bool).sum(axis=1)  # (B,) real tokens per sequence
    ends = np.cumsum(lengths)                                # the packed row after each sequence
    n_rows = int(ends[-1]) if len(ends) else 0
    parts = own_sequences(runs_of(lengths.tolist()), n_rows, params["layers"], params["embeddings"]["word"].dtype)
    if not parts:
        return []
    bounds = [0, *(int(np.searchsorted(ends, rows.start, side="right")) for rows, _ in parts[1:]), len(lengths)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _layers(x, runs, layers, config, output_hidden_states, cls_only):
    """The encoder's layers one after the other: (last hidden state, [every state] or None)."""
    states = [x] if output_hidden_states else None
    for i, p in enumerate(layers):
        last = cls_only and i == len(layers) - 1
        x = (cls_layer if last else layer)(x, runs, **p, n_head=config.num_attention_heads, eps=config.layer_norm_eps)
        if output_hidden_states:
            states.append(x)
    return x, states                                         # (N, D)


def sequence_parts(runs, parts):
    """The packed sequences cut into `parts` groups of whole sequences, balanced by tokens, as
    [(rows, runs of the group's own rows)]; [] if the largest group would exceed SEQUENCE_BALANCE
    times an even share (a few sequences of unequal lengths: each layer's rows are split instead)."""
    lengths = [S for _, B, S in runs for _ in range(B)]
    if not lengths:
        return []
    ends = np.cumsum(lengths)                                # the row after each sequence
    N = int(ends[-1])
    cuts = sorted({int(np.abs(ends - N * k / parts).argmin()) + 1 for k in range(1, parts)})  # sequences before each cut
    bounds = [0, *(c for c in cuts if 0 < c < len(lengths)), len(lengths)]
    rows = [0, *(int(ends[b - 1]) for b in bounds[1:])]
    if max(np.diff(rows)) > SEQUENCE_BALANCE * N / parts:
        return []
    return [(slice(r0, r1), runs_of(lengths[a:b]))
            for (a, b), (r0, r1) in zip(zip(bounds, bounds[1:]), zip(rows, rows[1:]))]


def _same_dtype(layers, dtype):
    """True if the weights are stored in the compute dtype: float16 weights are widened once per
    layer, which each core would otherwise do for itself."""
    return all(p["inter"]["dense"]["w"].dtype == dtype for p in layers)


def bert(input_ids, attention_mask, token_type_ids, params, config: BertConfig, output_hidden_states=False,
         cls_only=False):
    """BertModel without the pooler, as model.bert, computed on the real tokens only: padding is
    neither computed nor attended to (no mask is needed), and its rows of the result are zero.

    cls_only=True (for [CLS] pooling; not with output_hidden_states) returns the [CLS] rows alone,
    (B, 1, D): the last layer's Q, attention output, FFN and LayerNorms run for those rows only.
    Exact: each of those steps is row by row. Every sequence's first token must be real."""
    if cls_only and output_hidden_states:
        raise InputError("cls_only computes the last layer's [CLS] rows only; hidden states need every row")
    if cls_only and not np.asarray(attention_mask)[:, 0].all():
        raise InputError("cls_only needs every sequence's first token ([CLS]) unmasked")
    x = embeddings(input_ids, token_type_ids, **params["embeddings"], eps=config.layer_norm_eps)  # (B, S, D)
    B, S, D = x.shape
    real, runs = packed(attention_mask)
    rows = x.reshape(B * S, D) if real is None else x.reshape(B * S, D)[real]  # (N, D) real tokens, end to end
    with threads.forward_threads():
        last, states = encoder(rows, runs, params["layers"], config, output_hidden_states, cls_only)
    if cls_only:
        return last[:, None], None                           # (B, 1, D) every sequence has a [CLS] row
    return unpacked(last, real, (B, S)), None if states is None else [unpacked(h, real, (B, S)) for h in states]


def packed(attention_mask):
    """The real tokens' rows of the flattened (B*S) batch (None: all of them), and the
    (first row, sequences, length) runs of equal-length sequences they form once packed.
    Right or left padding, or holes: a sequence is the tokens its mask keeps, at their positions."""
    mask = np.asarray(attention_mask).astype(bool)           # (B, S)
    if mask.all():
        return None, [(0, *mask.shape)]
    return np.flatnonzero(mask.ravel()), runs_of(mask.sum(axis=1).tolist())


def runs_of(lengths):
    """The (first row, sequences, length) runs of equal-length sequences, packed end to end."""
    runs, start = [], 0
    for S, group in itertools.groupby(lengths):
        b = len(list(group))
        if S:                                                # an all-padding row has no tokens to compute
            runs.append((start, b, S))
        start += b * S
    return runs


def unpacked(rows, real, shape):
    """(N, D) packed rows -> (B, S, D), zero where the batch was padding."""
    if real is None:
        return rows.reshape(*shape, -1)                      # (B, S, D) a view
    out = np.zeros((shape[0] * shape[1], rows.shape[-1]), rows.dtype)
    out[real] = rows
    return out.reshape(*shape, -1)                           # (B, S, D)


# -- machinery: weights stored narrower than the compute, and both cores for what BLAS leaves serial --

def as_compute(w, x):
    """The weight matrix in the activations' dtype: a no-op, or float16 -> float32 for this one matmul."""
    return w if w.dtype == x.dtype else w.astype(x.dtype)


def widened(linear_params, x):
    """{"w", "b"} with w in the activations' dtype (as_compute), for a layer's worth of row blocks."""
    return dict(linear_params, w=as_compute(linear_params["w"], x))


def _rows(n, parts):
    """One (start, stop) slice of the n token rows per part, as threads.run's argument list."""
    return [(s,) for s in threads.chunks(n, parts)]


def attention_blocks(runs, n_head, itemsize, parts):
    """self_attention's work list: (first row, sequences, length, heads) blocks, to be spread over
    `parts` threads (inside threads.split(), so BLAS is single-threaded in each).

    Each head's matmuls are small (S x Dh); BLAS would spread every one of them over the cores
    and spend more time synchronizing than computing. So the threads take whole blocks of heads
    instead, each block's scores small enough to stay in the cache.
    """
    blocks, whole = [], sum(B for _, B, _ in runs) >= parts  # enough sequences to go round: no head split
    for start, B, S in runs:
        head_bytes = S * S * itemsize                        # one head's (S, S) scores
        if whole:                                            # whole sequences per block
            n = max(1, min(-(-B // parts), SCORES_BLOCK_BYTES // (n_head * head_bytes)))
            blocks += [(start + b * S, min(n, B - b), S, slice(None)) for b in range(0, B, n)]
        else:                                                # fewer sequences than cores: split heads too
            n = max(1, min(B * n_head // parts, SCORES_BLOCK_BYTES // head_bytes))
            blocks += [(start + b * S, 1, S, slice(h, h + n)) for b in range(B) for h in range(0, n_head, n)]
    return blocks


# Below this many token rows a forward splits each weight between the cores (layer_by_heads, or
# gemm's BLAS threads for small weights) instead of giving each core its own token rows: with few
# rows every core would stream every weight matrix. Measured (benchmarks/latency.py --layouts, Intel
# Xeon, before layer_by_heads: gemm's BLAS threads), few-rows layout / rows split: 0.57 at 8 rows,
# 0.79 at 64, 0.96 at 128 and 192, 1.03 at 256, 1.07 at 384.
FEW_ROWS = 256
# From this many elements of the FFN's first weight (bge-large's 4M; MiniLM's is 590K), a few rows
# take layer_by_heads. A/B of encode(), layer_by_heads / gemm's BLAS threads, Intel Xeon: MiniLM 1
# query 1.53, 4 queries 1.17, 1 passage 0.99; bge-large size in the function's docstring.
BY_HEADS_WEIGHTS = 1 << 20
# ... and from this many token rows: one query, even with bge's query prefix (about 20 rows), takes
# gemm's BLAS threads. A/B of encode() at bge-large size, layer_by_heads / gemm's BLAS threads, Intel
# Xeon, medians of 12-20 alternating rounds: OpenBLAS's Haswell kernel 1.08-1.10x the time at 11
# rows, 1.07x at 16, 1.03x at 20; its SkylakeX kernel 0.98-1.0x at 11 and 20 rows (noise), 4 queries
# (44 rows) 0.94x and 1 passage 0.89x on SkylakeX, 0.96x and 0.94x on Haswell. Where the hypervisor
# steals time, layer_by_heads loses more (benchmarks/layout_ab.py logs each call's stolen share).
BY_HEADS_ROWS = 24
# A block's scores stay within a core's L2 cache (4 MB on the benchmark machine): long sequences no
# longer stream their (S, S) scores through memory (32 x 256 tokens, MiniLM heads: 42 ms -> 35 ms).
SCORES_BLOCK_BYTES = 4 << 20
# Rows of the (rows, F) intermediate a core keeps between its two FFN matmuls (see layer()): longer
# BLAS calls beat a cache-sized intermediate (MiniLM corpus encode(), 1000 texts: 256 rows 12.4 s,
# 512 11.6 s, 1024 11.3 s, 2048 11.9 s).
ROWS_BLOCK = 1024
# encoder() gives each core its own sequences only if no core gets more than this times an even share
# of the tokens (8 x 128: 1.0; a batch of the benchmark corpus: 1.0 to 1.03).
SEQUENCE_BALANCE = 1.1
# float64 rows layer_norm normalizes at a time: its passes stay in a core's L2 cache.
LN_BLOCK_BYTES = 512 << 10
