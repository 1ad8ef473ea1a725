"""Numba kernels of the colour solve: the pixel model's sparse operator A and its normal matrix.

A maps the colours of M Gaussians, ``[M, 3]``, to the colours of P pixels, ``[P, 3]``: pixel p is
``sum_k weights[p, k] * colours[ids[p, k]]`` over its top-K contributors (``ids[p, k] = -1`` ends a
row early). It is stored pixel-major, ``ids [P, K] int32`` and ``weights [P, K] float32``, the
rasterizer's layout:
- ``gather`` applies A (pixels in parallel);
- ``scatter`` applies A^T: ``CHUNKS`` fixed blocks of pixels each scatter into their own ``[M, 3]``
  buffer, summed in block order after;
- ``gram`` builds ``G = A^T A`` once as a CSR matrix (from a Gaussian-major index of A made by a
  counting sort, ``transpose``), and ``spmv`` applies it in the solver's iterations;
- ``restrict_columns`` keeps only the columns of the unknowns (the Gaussians that are re-solved) and
  the rows that still hold one.

Why an explicit G rather than ``A^T (A x)`` in every iteration: G is far smaller than A. At the
benchmark size (14 views of 256 x 256, K = 8) A has 7.3M entries for 50k random Gaussians and G 0.46M
(2.1M and 1.4M on the LGM monkey). Measured on the 2-core development machine: a fused matrix-free
``A^T A x`` (one pass over A, scattering into per-block buffers) took 12 ms an iteration, a
Gaussian-major gather for A^T alone 22 ms; ``spmv`` takes under 1 ms (about 1.5 ms on the monkey),
and building G about 0.2 s (0.09 s), while the solve runs 50 to 100 iterations.

Every sum runs in an order fixed by the data, not by the thread count, so results are bit-identical
whatever ``numba.set_num_threads`` says. Accumulation is float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNKS = 8
"""Fixed number of pixel blocks the scatters split the work into (independent of the thread count)."""


@njit(cache=True, parallel=True)
def gather(ids: np.ndarray, weights: np.ndarray, colours: np.ndarray, out: np.ndarray) -> None:
    """``out = A @ colours``.

    Args:
        ids: ``[P, K]`` int32 column indices in [0, M), -1 after a pixel's last contributor.
        weights: ``[P, K]`` float32 compositing weights.
        colours: ``[M, 3]`` float64.
        out: ``[P, 3]`` float64, written.
    """
    n_pixels, k_top = ids.shape
    for p in prange(n_pixels):
        red = 0.0
        green = 0.0
        blue = 0.0
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            w = np.float64(weights[p, k])
            red += w * colours[g, 0]
            green += w * colours[g, 1]
            blue += w * colours[g, 2]
        out[p, 0] = red
        out[p, 1] = green
        out[p, 2] = blue


@njit(cache=True, parallel=True)
def _sum_chunks(partial: np.ndarray, out: np.ndarray) -> None:
    """``out = partial.sum(axis=0)``, summed in chunk order. partial ``[C, M, 3]``, out ``[M, 3]``."""
    n_chunks, n = partial.shape[0], partial.shape[1]
    for g in prange(n):
        for ch in range(3):
            s = 0.0
            for c in range(n_chunks):
                s += partial[c, g, ch]
            out[g, ch] = s


@njit(cache=True, parallel=True)
def scatter(ids: np.ndarray, weights: np.ndarray, values: np.ndarray, partial: np.ndarray, out: np.ndarray):
    """``out = A^T @ values``.

    Args:
        ids: ``[P, K]`` int32; weights: ``[P, K]`` float32 (see ``gather``).
        values: ``[P, 3]`` float64.
        partial: ``[C, M, 3]`` float64 scratch, C = ``CHUNKS`` (any C gives the same sums up to rounding).
        out: ``[M, 3]`` float64, written.
    """
    n_pixels, k_top = ids.shape
    n_chunks = partial.shape[0]
    step = (n_pixels + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        acc = partial[c]
        acc[:] = 0.0
        for p in range(c * step, min(n_pixels, (c + 1) * step)):
            red, green, blue = values[p, 0], values[p, 1], values[p, 2]
            for k in range(k_top):
                g = ids[p, k]
                if g < 0:
                    break
                w = np.float64(weights[p, k])
                acc[g, 0] += w * red
                acc[g, 1] += w * green
                acc[g, 2] += w * blue
    _sum_chunks(partial, out)


@njit(cache=True)
def transpose(ids: np.ndarray, weights: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Gaussian-major copy of A's entries (a counting sort by column, stable in pixel order).

    Args:
        ids: ``[P, K]`` int32 columns in [0, m), -1 after a pixel's last contributor.
        weights: ``[P, K]`` float32.
        m: the number of columns M.

    Returns:
        offsets: ``[M + 1]`` int64; column g's entries are ``offsets[g]:offsets[g + 1]``.
        pixels: ``[E]`` int32 the row (pixel) of each entry, increasing within a column.
        values: ``[E]`` float32 its weight.
    """
    n_pixels, k_top = ids.shape
    offsets = np.zeros(m + 1, dtype=np.int64)
    for p in range(n_pixels):
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            offsets[g + 1] += 1
    for g in range(m):
        offsets[g + 1] += offsets[g]
    cursor = offsets[:-1].copy()
    pixels = np.empty(offsets[m], dtype=np.int32)
    values = np.empty(offsets[m], dtype=np.float32)
    for p in range(n_pixels):
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            e = cursor[g]
            pixels[e] = p
            values[e] = weights[p, k]
            cursor[g] = e + 1
    return offsets, pixels, values


@njit(cache=True, parallel=True)
def _gram_count(
    ids: np.ndarray,
    offsets: np.ndarray,
    pixels: np.ndarray,
    order: np.ndarray,
    bounds: np.ndarray,
    counts: np.ndarray,
) -> None:
    """``counts[g]``: the number of distinct columns h in row g of ``A^T A`` (``gram``'s first pass)."""
    m = offsets.shape[0] - 1
    k_top = ids.shape[1]
    for c in prange(bounds.shape[0] - 1):
        last_row = np.full(m, -1, dtype=np.int64)  # the last row that met column h
        for i in range(bounds[c], bounds[c + 1]):
            g = order[i]
            n = 0
            for e in range(offsets[g], offsets[g + 1]):
                p = pixels[e]
                for k in range(k_top):
                    h = ids[p, k]
                    if h < 0:
                        break
                    if last_row[h] != g:
                        last_row[h] = g
                        n += 1
            counts[g] = n


@njit(cache=True, parallel=True)
def _gram_fill(
    ids: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    pixels: np.ndarray,
    values: np.ndarray,
    order: np.ndarray,
    bounds: np.ndarray,
    row_ptr: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
) -> None:
    """Write the rows of ``A^T A`` (``gram``'s second pass).

    Row g sums ``w_pg * w_ph`` over g's pixels p (in pixel order) and their contributors h; its
    columns are in order of first occurrence. So a row does not depend on the order rows are visited
    in (``order``) nor on which block of ``bounds`` (ranges of ``order``, one per task) computes it.
    """
    m = offsets.shape[0] - 1
    k_top = ids.shape[1]
    for c in prange(bounds.shape[0] - 1):
        last_row = np.full(m, -1, dtype=np.int64)  # the last row that met column h...
        slot = np.empty(m, dtype=np.int64)  # ...and where h sits in that row's cols/vals
        for i in range(bounds[c], bounds[c + 1]):
            g = order[i]
            n = row_ptr[g]
            for e in range(offsets[g], offsets[g + 1]):
                p = pixels[e]
                w = np.float64(values[e])
                for k in range(k_top):
                    h = ids[p, k]
                    if h < 0:
                        break
                    if last_row[h] != g:
                        last_row[h] = g
                        slot[h] = n
                        cols[n] = h
                        vals[n] = 0.0
                        n += 1
                    s = slot[h]
                    vals[s] += w * np.float64(weights[p, k])


def gram(
    ids: np.ndarray, weights: np.ndarray, m: int, tasks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A^T A`` as a CSR matrix (M x M, symmetric), built from A's Gaussian-major index.

    Args:
        ids: ``[P, K]`` int32 columns in [0, m); weights: ``[P, K]`` float32.
        m: the number of columns M.
        tasks: parallel tasks to split the rows into (balanced by work; the result does not depend
            on it).

    Returns:
        row_ptr ``[M + 1]`` int64, cols ``[nnz]`` int32, vals ``[nnz]`` float64.
    """
    offsets, pixels, values = transpose(ids, weights, m)
    # Rows are visited in the order of their first pixel, so that consecutive rows read the same
    # pixels of A while they are in cache (the Gaussians' own numbering is spatially random), and
    # split into blocks of about equal work (entries), one parallel task each.
    order = np.argsort(pixels[offsets[:-1]], kind="stable") if m else np.zeros(0, dtype=np.int64)
    work = np.concatenate(([0], np.cumsum(np.diff(offsets)[order])))
    bounds = np.searchsorted(work, np.linspace(0, work[-1], tasks + 1)).astype(np.int64)
    bounds[0], bounds[-1] = 0, m
    row_ptr = np.zeros(m + 1, dtype=np.int64)
    _gram_count(ids, offsets, pixels, order, bounds, row_ptr[1:])
    np.cumsum(row_ptr, out=row_ptr)
    cols, vals = np.empty(row_ptr[-1], dtype=np.int32), np.empty(row_ptr[-1])
    _gram_fill(ids, weights, offsets, pixels, values, order, bounds, row_ptr, cols, vals)
    return row_ptr, cols, vals


@njit(cache=True, parallel=True)
def spmv(row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out = G @ x`` for a CSR matrix G (``gram``'s), rows in parallel.

    Args:
        x: ``[M, 3]`` float64.
        out: ``[M, 3]`` float64, written.
    """
    for g in prange(row_ptr.shape[0] - 1):
        red = 0.0
        green = 0.0
        blue = 0.0
        for j in range(row_ptr[g], row_ptr[g + 1]):
            v = vals[j]
            h = cols[j]
            red += v * x[h, 0]
            green += v * x[h, 1]
            blue += v * x[h, 2]
        out[g, 0] = red
        out[g, 1] = green
        out[g, 2] = blue


@njit(cache=True)
def diagonal(row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """``[M]`` float64 the diagonal of a CSR matrix."""
    m = row_ptr.shape[0] - 1
    out = np.zeros(m)
    for g in range(m):
        for j in range(row_ptr[g], row_ptr[g + 1]):
            if cols[j] == g:
                out[g] = vals[j]
    return out


@njit(cache=True)
def select_pixels(
    ids: np.ndarray,
    weights: np.ndarray,
    alpha: np.ndarray,
    rgb: np.ndarray,
    background: np.ndarray,
    renormalise: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows of the pixel model: every pixel with at least one contributor, in image order.

    Args:
        ids: ``[Q, K]`` int32 Gaussian indices by decreasing weight, -1 where unused (Q = V x H x W).
        weights: ``[Q, K]`` float32 their compositing weights.
        alpha: ``[Q]`` float32 coverage of the render the contributors come from.
        rgb: ``[Q, 3]`` uint8 target colours.
        background: ``[3]`` float64 in [0, 1].
        renormalise: scale each pixel's K weights to sum to its alpha.

    Returns:
        pixels: ``[P]`` int64 flat index of each kept pixel.
        ids: ``[P, K]`` int32, weights ``[P, K]`` float32 of those pixels.
        targets: ``[P, 3]`` float64 ``rgb / 255 - (1 - alpha) * background``: the part of the pixel
            the Gaussians must explain.
    """
    n_all, k_top = ids.shape
    n_pixels = 0
    for q in range(n_all):
        if ids[q, 0] >= 0:
            n_pixels += 1
    pixels = np.empty(n_pixels, dtype=np.int64)
    out_ids = np.empty((n_pixels, k_top), dtype=np.int32)
    out_weights = np.empty((n_pixels, k_top), dtype=np.float32)
    targets = np.empty((n_pixels, 3))
    p = 0
    for q in range(n_all):
        if ids[q, 0] < 0:
            continue
        a = np.float64(alpha[q])
        total = 0.0
        for k in range(k_top):
            total += np.float64(weights[q, k])
        scale = a / total if renormalise and total > 0.0 else 1.0
        for k in range(k_top):
            out_ids[p, k] = ids[q, k]
            out_weights[p, k] = np.float32(np.float64(weights[q, k]) * scale)
        for ch in range(3):
            targets[p, ch] = np.float64(rgb[q, ch]) / 255.0 - (1.0 - a) * background[ch]
        pixels[p] = q
        p += 1
    return pixels, out_ids, out_weights, targets


@njit(cache=True)
def compact_columns(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the Gaussians that occur in ``ids`` as 0..M-1, in increasing order of their index.

    Args:
        ids: ``[P, K]`` int32 in [-1, n).
        n: the number of Gaussians N.

    Returns:
        columns: ``[P, K]`` int32, ``ids`` renumbered (-1 kept).
        gaussians: ``[M]`` int64, the original index of each column.
    """
    n_pixels, k_top = ids.shape
    column = np.zeros(n, dtype=np.int64)
    for p in range(n_pixels):
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            column[g] = 1
    m = 0
    for g in range(n):
        if column[g]:
            column[g] = m
            m += 1
        else:
            column[g] = -1
    gaussians = np.empty(m, dtype=np.int64)
    for g in range(n):
        if column[g] >= 0:
            gaussians[column[g]] = g
    columns = np.full((n_pixels, k_top), -1, dtype=np.int32)
    for p in range(n_pixels):
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            columns[p, k] = column[g]
    return columns, gaussians


@njit(cache=True)
def restrict_columns(
    ids: np.ndarray, weights: np.ndarray, unknown: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A with only the columns in ``unknown``, renumbered, and only the rows that keep an entry.

    Args:
        ids: ``[P, K]`` int32 columns in [0, M), -1 after a pixel's last contributor.
        weights: ``[P, K]`` float32.
        unknown: ``[M]`` bool, the columns to keep.

    Returns:
        rows: ``[P']`` int64 the rows kept (those with at least one entry of a kept column), increasing.
        ids: ``[P', K]`` int32 their entries of kept columns, in their order, renumbered 0..M'-1 in
            increasing order of the old number; -1 after the last.
        weights: ``[P', K]`` float32 the entries' weights (0 where unused).
    """
    n_pixels, k_top = ids.shape
    m = unknown.shape[0]
    column = np.full(m, -1, dtype=np.int64)
    count = 0
    for c in range(m):
        if unknown[c]:
            column[c] = count
            count += 1
    n_rows = 0
    for p in range(n_pixels):
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            if unknown[g]:
                n_rows += 1
                break
    rows = np.empty(n_rows, dtype=np.int64)
    out_ids = np.full((n_rows, k_top), -1, dtype=np.int32)
    out_weights = np.zeros((n_rows, k_top), dtype=np.float32)
    r = 0
    for p in range(n_pixels):
        j = 0
        for k in range(k_top):
            g = ids[p, k]
            if g < 0:
                break
            if unknown[g]:
                out_ids[r, j] = column[g]
                out_weights[r, j] = weights[p, k]
                j += 1
        if j > 0:
            rows[r] = p
            r += 1
    return rows, out_ids, out_weights
