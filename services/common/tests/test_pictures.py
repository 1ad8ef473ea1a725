"""Pictures for people: sheet layouts, mask overlays, GIFs and RGBA references, checked pixel by pixel."""

import io

import numpy as np
import pytest
from PIL import Image

from services.common.pictures import (
    GUTTER,
    LABEL_HEIGHT,
    SIDE_LABEL_WIDTH,
    before_after_sheet,
    contact_sheet,
    mask_overlay,
    straight_rgba,
    turntable_gif,
)


def _images(v: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(v, h, w, 3), dtype=np.uint8)


def test_contact_sheet_tiles_row_by_row_and_fills_the_rest_white() -> None:
    images = _images(5, 6, 7)
    sheet = contact_sheet(images, columns=3)
    assert sheet.shape == (12, 21, 3) and sheet.dtype == np.uint8
    for i, image in enumerate(images):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(sheet[r * 6 : (r + 1) * 6, c * 7 : (c + 1) * 7], image)
    assert (sheet[6:, 14:] == 255).all()


@pytest.mark.parametrize("columns", [0, -1, 2.0, True])
def test_contact_sheet_rejects_bad_columns(columns) -> None:
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        contact_sheet(_images(2, 4, 4), columns=columns)


def test_contact_sheet_rejects_non_images() -> None:
    with pytest.raises(ValueError, match=r"images must be \[V, H, W, 3\] uint8, got \[4, 4, 3\] uint8"):
        contact_sheet(np.zeros((4, 4, 3), np.uint8), columns=2)
    with pytest.raises(ValueError, match=r"got \[1, 4, 4, 3\] float32"):
        contact_sheet(np.zeros((1, 4, 4, 3), np.float32), columns=2)


@pytest.mark.parametrize(
    ("views", "max_columns", "columns", "blocks"), [(3, 9, 3, 1), (11, 4, 4, 3), (9, 9, 9, 1)]
)
def test_before_after_sheet_places_every_view_as_documented(views, max_columns, columns, blocks) -> None:
    h, w = 20, 30
    before, after = _images(views, h, w, seed=1), _images(views, h, w, seed=2)
    azimuths = np.arange(views) * 40.0
    sheet = before_after_sheet(before, after, azimuths, max_columns=max_columns)

    block_height = LABEL_HEIGHT + 2 * h + 2 * GUTTER
    assert sheet.shape == (blocks * block_height, SIDE_LABEL_WIDTH + columns * (w + GUTTER), 3)
    assert sheet.dtype == np.uint8
    covered = np.zeros(sheet.shape[:2], dtype=bool)
    for i in range(views):
        b, c = divmod(i, columns)
        x = SIDE_LABEL_WIDTH + c * (w + GUTTER)
        y_before = b * block_height + LABEL_HEIGHT
        y_after = y_before + h + GUTTER
        np.testing.assert_array_equal(sheet[y_before : y_before + h, x : x + w], before[i])
        np.testing.assert_array_equal(sheet[y_after : y_after + h, x : x + w], after[i])
        covered[y_before : y_before + h, x : x + w] = True
        covered[y_after : y_after + h, x : x + w] = True
    # Everything but the tiles, the label bands and the side margin is white: the gutters and the
    # empty tiles of a last, partial block.
    labels = np.zeros_like(covered)
    labels[:, :SIDE_LABEL_WIDTH] = True
    for b in range(blocks):
        labels[b * block_height : b * block_height + LABEL_HEIGHT] = True
    assert (sheet[~covered & ~labels] == 255).all()


def test_before_after_sheet_labels_azimuths_and_rows() -> None:
    h, w = 40, 48
    before = np.full((2, h, w, 3), 128, np.uint8)
    sheet = before_after_sheet(before, before, [0.0, 180.0])
    band = sheet[:LABEL_HEIGHT, SIDE_LABEL_WIDTH:]
    for c in range(2):
        column = band[:, c * (w + GUTTER) : c * (w + GUTTER) + w]
        assert (column < 128).any(), f"no label drawn over column {c}"
    margin = sheet[LABEL_HEIGHT:, :SIDE_LABEL_WIDTH]
    assert (margin[:h] < 128).any() and (margin[h + GUTTER :] < 128).any(), "rows are not named"


def test_before_after_sheet_leaves_out_labels_wider_than_a_tile() -> None:
    tiny = _images(2, 4, 4)
    sheet = before_after_sheet(tiny, tiny, [123.4, -56.7])
    assert (sheet[:LABEL_HEIGHT, SIDE_LABEL_WIDTH:] == 255).all()


def test_before_after_sheet_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \[2, 4, 4, 3\] and \[3, 4, 4, 3\]"):
        before_after_sheet(_images(2, 4, 4), _images(3, 4, 4), [0, 20])
    with pytest.raises(ValueError, match=r"one azimuth per view \(2\), got 3"):
        before_after_sheet(_images(2, 4, 4), _images(2, 4, 4), [0, 20, 40])
    with pytest.raises(ValueError, match="max_columns must be an int >= 1, got 0"):
        before_after_sheet(_images(2, 4, 4), _images(2, 4, 4), [0, 20], max_columns=0)


def test_mask_overlay_tints_the_mask_outlines_its_edge_and_leaves_the_rest() -> None:
    rgb = _images(2, 12, 14, seed=3)
    mask = np.zeros((2, 12, 14), dtype=bool)
    mask[0, 3:8, 4:10] = True
    mask[1, 0:5, 0:5] = True  # touches the image border
    out = mask_overlay(rgb, mask, colour=(0, 255, 0), opacity=0.25)

    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], rgb[~mask])
    edge = np.zeros_like(mask)
    edge[0, 3:8, 4:10] = True
    edge[0, 4:7, 5:9] = False
    edge[1, 0:5, 0:5] = True
    edge[1, 0:4, 0:4] = False  # the border sides are not outlined
    assert (out[edge] == [0, 255, 0]).all()
    inside = mask & ~edge
    expected = np.rint(0.75 * rgb[inside].astype(np.float64) + 0.25 * np.array([0, 255, 0])).astype(np.uint8)
    np.testing.assert_array_equal(out[inside], expected)


def test_mask_overlay_takes_uint8_masks_and_single_images() -> None:
    rgb = _images(1, 9, 9, seed=4)
    mask = np.zeros((1, 9, 9), dtype=np.uint8)
    mask[0, 2:7, 2:7] = 1
    by_bool = mask_overlay(rgb, mask.astype(bool))
    np.testing.assert_array_equal(mask_overlay(rgb, mask), by_bool)
    np.testing.assert_array_equal(mask_overlay(rgb, mask * 255), by_bool)
    np.testing.assert_array_equal(mask_overlay(rgb[0], mask[0]), by_bool[0])
    assert not np.shares_memory(mask_overlay(rgb, np.zeros_like(mask)), rgb)


def test_mask_overlay_rejects_bad_arguments() -> None:
    rgb = _images(1, 4, 4)
    with pytest.raises(
        ValueError, match=r"mask must be \[1, 4, 4\] bool or uint8 to match rgb, got \[1, 4, 5\]"
    ):
        mask_overlay(rgb, np.zeros((1, 4, 5), bool))
    with pytest.raises(ValueError, match=r"got \[1, 4, 4\] float32"):
        mask_overlay(rgb, np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"colour must be 3 ints in \[0, 255\]"):
        mask_overlay(rgb, np.zeros((1, 4, 4), bool), colour=(300, 0, 0))
    with pytest.raises(ValueError, match=r"opacity must be in \[0, 1\], got 1\.5"):
        mask_overlay(rgb, np.zeros((1, 4, 4), bool), opacity=1.5)


def test_turntable_gif_decodes_to_every_frame_looping() -> None:
    # Few colours per frame, so the GIF palette holds them exactly.
    frames = np.zeros((5, 16, 24, 3), dtype=np.uint8)
    for f in range(5):
        frames[f, :, : 4 * (f + 1)] = (200, 40 * f, 10)
        frames[f, 8:, :] = (0, 0, 255)
    data = turntable_gif(frames, frame_ms=80)
    assert data == turntable_gif(frames, frame_ms=80)
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.size == (24, 16)
        assert gif.info["loop"] == 0
        for f in range(5):
            gif.seek(f)
            assert gif.info["duration"] == 80
            np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), frames[f])


def test_turntable_gif_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="frame_ms must be an int >= 20, got 10"):
        turntable_gif(_images(2, 4, 4), frame_ms=10)
    with pytest.raises(ValueError, match=r"frames must be \[V, H, W, 3\] uint8 with V, H, W >= 1"):
        turntable_gif(np.zeros((0, 4, 4, 3), np.uint8))


def test_straight_rgba_unpremultiplies_and_keeps_alpha() -> None:
    rgb = np.array([[[0.25, 0.1, 0.0], [0.0, 0.0, 0.0], [0.9, 0.9, 0.9]]])
    alpha = np.array([[0.5, 0.0, 0.6]])
    rgba = straight_rgba(rgb, alpha)
    assert rgba.shape == (1, 3, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[0, 0], [128, 51, 0, 128])
    np.testing.assert_array_equal(rgba[0, 1], [0, 0, 0, 0])
    np.testing.assert_array_equal(rgba[0, 2], [255, 255, 255, 153])  # 0.9 / 0.6 clipped to 1
    with pytest.raises(ValueError, match=r"got \[1, 3, 3\] and \[1, 2\]"):
        straight_rgba(rgb, alpha[:, :2])
