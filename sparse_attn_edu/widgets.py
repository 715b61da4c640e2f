"""An interactive explorer of sparse attention masks (ipywidgets).

Change a pattern with sliders and see at once what it costs and how far information
travels -- the two questions behind Longformer (Beltagy et al. 2020, arXiv:2004.05150)
and BigBird (Zaheer et al. 2020, arXiv:2007.14062):

* the token mask with its block overlay, and the block kinds a block kernel would visit;
* the cost: density, active / partial blocks, FLOPs and score memory against dense, and
  the speed-up an ideal block kernel would get (``viz.pattern_stats``);
* reachability after L stacked layers: which positions reach the chosen query, layer by
  layer, the fraction of pairs connected, and how many layers connect every pair
  (``propagation``);
* the attention weights of one query on random q / k (stage 2's ``masked_softmax``);
* the pattern as Python and as a FlexAttention ``mask_mod``, to copy into your model.

Every number and mask comes from the library (``patterns``, ``viz``, ``propagation``,
``masked``); this module only wires controls to it and draws. Figures are rendered to PNG
into ``widgets.Image``, so the explorer looks the same in JupyterLab, the classic notebook
and Voila; each view's figure is made once and updated in place, redrawing only what
changed (blitting, see ``_View``). The standalone page (also ``make explorer``)::

    .venv/bin/voila notebooks/06_mask_explorer.ipynb --port=8866 --no-browser

Responsiveness at n = 4096: sliders update on release, only the views a control affects
are redrawn, patterns and propagation results are cached, an uncached reachability is
computed on a worker thread (the other views never wait for it), and the token mask is
drawn for at most ``MAX_IMAGE_TOKENS`` tokens (a labelled zoom; the block kinds map shows
them all). Most of the rest is matplotlib drawing the changed artists -- text above all --
and PNG encoding. Tick labels are drawn again only for axes whose limits changed: the block
kinds map counts tokens on its axes, so a block size leaves them alone; a sequence length
redraws the ticks of the axes that follow n, and keeps them for going back (``_View``).
"""

from __future__ import annotations

import html
import math
import re
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import masked, patterns, propagation, viz

PATTERNS = {
    "sliding window": "sliding_window",
    "Longformer": "longformer",
    "BigBird": "bigbird",
    "dilated window": "dilated_window",
}
MAX_SEQ_LEN = 8192  # the explorer's own limit: propagation keeps an n x n bit state
MAX_IMAGE_TOKENS = 512  # the token mask is drawn for at most this many tokens (a zoom)
HEADS = 4  # BigBird draws its random blocks per head
HEAD_DIM = 64  # for the FLOP / memory counts and the random q, k
QK_SEED = 0  # the random q, k of the weights view
DPI = 80
LAYER_2_KEPT = 4  # per view: ticks and labels for the last few axes limits (see _View)
FIGSIZE = {"mask": (10.0, 5.0), "reach": (9.6, 3.0), "weights": (9.6, 2.4)}  # inches


class _LRU(OrderedDict):
    """A small least-recently-used cache: patterns and propagation results per setting."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, compute):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = compute()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class _View:
    """One view's figure, kept for the explorer's life and redrawn by blitting.

    Matplotlib draws text glyph by glyph, and most of a figure's text never changes while a
    slider moves. So the figure is drawn in three layers, kept as pixels, and each is drawn
    again only where what it shows changed:

    1. the background: everything the layers below leave out -- colour bars, legends,
       titles that stay; drawn again only for another set of changing artists or another
       legend or axis label outside layer 2;
    2. the ticks, tick labels and axis labels of each axes that holds changing artists,
       per axes: when one axes' limits change (another sequence length), only its own are
       erased (back to the background) and drawn again;
    3. the artists an update changed, drawn over a copy of layer 2 every time (with the
       frames that a normal draw puts over them).
    """

    def __init__(self, figsize: tuple[float, float], **margins):
        self.figure = Figure(figsize=figsize, dpi=DPI)
        # Fixed margins: a layout engine would cost as much as the drawing itself.
        self.figure.subplots_adjust(**margins)
        self.canvas = FigureCanvasAgg(self.figure)
        self._background = None  # layer 1
        self._with_axes = None  # layers 1 and 2
        self._drawn_with: list | None = None  # what layer 1 was drawn for
        self._animated: list[Artist] = []  # layer 3, in drawing order
        self._axis_layer: dict[Axes, list[Axis]] = {}  # layer 2, per axes
        self._axes_drawn: dict[Axes, tuple] = {}  # per axes of layer 2: (what, pixels' box)
        self._layers_2 = _LRU(LAYER_2_KEPT)  # (layers 1 and 2, _axes_drawn) by what they show

    def _layers(self, changed: list[Artist]) -> tuple[list, dict[Axes, list[Axis]]]:
        """What layer 1 shows (to compare), and the Axis artists of layer 2 per axes."""
        holders = [ax for ax in self.figure.axes if any(a.axes is ax for a in changed)]
        axis_layer = {
            ax: [axis for axis in (ax.xaxis, ax.yaxis) if axis not in changed] for ax in holders
        }
        state = [set(changed), [ax.get_legend() for ax in self.figure.axes]]
        state += [
            (ax.get_xlabel(), ax.get_ylabel()) for ax in self.figure.axes if ax not in holders
        ]
        return state, axis_layer

    def _draw_background(self, changed: list[Artist], axis_layer: dict) -> None:
        for artist in self._animated + [a for axes in self._axis_layer.values() for a in axes]:
            artist.set_animated(False)
        # What a normal draw puts over the changed data: frames, and legends inside the axes.
        renderer = self.canvas.get_renderer()
        over = []
        for ax in {artist.axes for artist in changed} - {None}:
            over += ax.spines.values()
            legend = ax.get_legend()
            if legend is not None and legend.get_window_extent(renderer).overlaps(ax.bbox):
                over.append(legend)
        self._animated = sorted(changed + over, key=lambda artist: artist.get_zorder())
        self._axis_layer = axis_layer
        for artist in self._animated + [a for axes in axis_layer.values() for a in axes]:
            artist.set_animated(True)  # left out of canvas.draw()
        self.canvas.draw()
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._with_axes, self._axes_drawn = self._background, {}
        self._layers_2 = _LRU(LAYER_2_KEPT)  # drawn over this background only

    def _redraw_axes(self) -> None:
        """Layer 2: draw again the ticks and labels of the axes whose limits or labels changed.

        Their old pixels are first put back to the background, box by box; an axes whose
        box meets an erased one loses pixels too, so it is redrawn as well. The last few
        layers 2 are kept, by what they show: going back to a sequence length seen a moment
        ago draws nothing.
        """
        state = {
            ax: tuple((axis.get_label_text(), *axis.get_view_interval()) for axis in axes)
            for ax, axes in self._axis_layer.items()
        }
        if all(state[ax] == self._axes_drawn.get(ax, (None,))[0] for ax in state):
            return
        key = tuple(state.values())
        self._with_axes, self._axes_drawn = self._layers_2.get_or(
            key, lambda: self._draw_axes(state)
        )

    def _draw_axes(self, state: dict[Axes, tuple]) -> tuple:
        """Layer 2 drawn over the last one for the axes `state` (what each shows)."""
        drawn = dict(self._axes_drawn)
        stale = {ax for ax in state if state[ax] != drawn.get(ax, (None,))[0]}
        boxes = {ax: box for ax, (_, box) in drawn.items() if box is not None}
        grown = True
        while grown:  # every axes whose box meets the box of one redrawn
            more = {
                ax
                for ax in set(boxes) - stale
                if any(_overlap(boxes[ax], boxes[s]) for s in stale & set(boxes))
            }
            stale |= more
            grown = bool(more)
        self.canvas.restore_region(self._with_axes)
        for ax in stale & set(boxes):
            # (x0, row0, x1, row1) as a saved region counts them: from its corner (0, 0)
            self.canvas.restore_region(self._background, bbox=boxes[ax], xy=(0, 0))
        renderer = self.canvas.get_renderer()
        pixels = np.asarray(self.canvas.buffer_rgba()).view(np.uint32)[..., 0]  # (H, W) live
        for ax in stale:
            before = pixels.copy()
            ax.apply_aspect()  # as a normal draw does first: equal aspect moves the axes
            for axis in self._axis_layer[ax]:
                axis.draw(renderer)
            drawn[ax] = (state[ax], _changed_box(before, pixels))
        return self.canvas.copy_from_bbox(self.figure.bbox), drawn

    def png(self, changed: list[Artist]) -> bytes:
        """The figure as PNG bytes, after an update that changed the artists `changed`."""
        state, axis_layer = self._layers(changed)
        if state != self._drawn_with:
            self._draw_background(changed, axis_layer)
            self._drawn_with = state
        self._redraw_axes()
        self.canvas.restore_region(self._with_axes)
        renderer = self.canvas.get_renderer()
        for artist in self._animated:
            artist.draw(renderer)
        return _png(self.canvas.buffer_rgba())


def _changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, row0, x1, row1), ends excluded, around the pixels that differ; None if none do."""
    rows = np.flatnonzero((before != after).any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero((before[rows[0] : rows[-1] + 1] != after[rows[0] : rows[-1] + 1]).any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _png(rgba: memoryview) -> bytes:
    """(height, width, 4) uint8 pixels of an opaque figure as an RGB PNG, encoded fast.

    Every update encodes its views, so this takes the quickest honest route: rows left
    unfiltered (PIL picks a filter per row, which costs more than the compression) and
    zlib's fastest level; the files come out no larger than PIL's at that level.
    """
    pixels = np.asarray(rgba)
    height, width = pixels.shape[:2]
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # each row: filter byte 0 ("None")
    rows[:, 1:].reshape(height, width, 3)[:] = pixels[:, :, :3]  # RGB: the alpha is dropped

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits per channel, RGB
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
            chunk(b"IEND", b""),
        ]
    )


def build_pattern(settings: dict) -> patterns.Pattern:
    """The library pattern for the explorer's settings (the same call the export shows)."""
    n = settings["seq_len"]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_SEQ_LEN:
        raise ValueError(f"expected seq_len in [1, {MAX_SEQ_LEN}] for the explorer, got {n!r}")
    kind = settings["pattern"]
    if kind == "sliding_window":
        p = patterns.sliding_window(n, settings["window"])
    elif kind == "dilated_window":
        p = patterns.dilated_window(n, settings["window"], settings["dilation"])
    elif kind == "longformer":
        p = patterns.longformer(n, settings["window"], tuple(range(settings["global_tokens"])))
    elif kind == "bigbird":
        p = patterns.bigbird(
            n,
            block_size=settings["block_size"],
            window_blocks=settings["window_blocks"],
            global_blocks=settings["global_blocks"],
            random_blocks=settings["random_blocks"],
            seed=settings["seed"],
            num_heads=HEADS,
        )
    else:
        raise ValueError(f"expected a pattern in {sorted(PATTERNS.values())}, got {kind!r}")
    return p & patterns.causal(n) if settings["causal"] else p


def python_source(pattern: patterns.Pattern) -> str:
    """The pattern as runnable Python: its repr is the factory call that builds it."""
    code = repr(pattern)
    names = sorted(set(re.findall(r"([A-Za-z_]\w*)\(", code)))
    return f"from sparse_attn_edu.patterns import {', '.join(names)}\n\np = {code}\n"


def mask_mod_source(settings: dict) -> str:
    """A FlexAttention ``mask_mod`` for the settings, as standalone source."""
    n, bs = settings["seq_len"], settings["block_size"]
    kind = settings["pattern"]
    heads = HEADS if kind == "bigbird" else None
    lines = ["import torch", "from torch.nn.attention.flex_attention import create_block_mask", ""]
    if kind == "bigbird":
        # The random blocks come from the library's seeded draw: take its block layout.
        lines += [
            "from sparse_attn_edu.patterns import bigbird",
            "",
            f"layout = bigbird({n}, block_size={bs}, window_blocks={settings['window_blocks']}, "
            f"global_blocks={settings['global_blocks']}, random_blocks="
            f"{settings['random_blocks']}, seed={settings['seed']}, num_heads={HEADS})"
            f".block_layout({bs})  # bool (H, nb, nb)",
            "",
            "",
            "def mask_mod(b, h, q_idx, kv_idx):",
            f"    allowed = layout[h, q_idx // {bs}, kv_idx // {bs}]",
        ]
    else:
        half = settings["window"] // 2
        lines += ["", "def mask_mod(b, h, q_idx, kv_idx):", "    d = q_idx - kv_idx"]
        if kind == "dilated_window":
            dil = settings["dilation"]
            lines.append(f"    allowed = (torch.abs(d) <= {half * dil}) & (d % {dil} == 0)")
        else:
            lines.append(f"    allowed = torch.abs(d) <= {half}  # window {settings['window']}")
        if kind == "longformer" and settings["global_tokens"]:
            g = settings["global_tokens"]
            lines.append(f"    allowed = allowed | (q_idx < {g}) | (kv_idx < {g})  # global")
    if settings["causal"]:
        lines.append("    allowed = allowed & (q_idx >= kv_idx)  # causal")
    lines += [
        "    return allowed",
        "",
        "",
        f"block_mask = create_block_mask(mask_mod, B=None, H={heads}, Q_LEN={n}, KV_LEN={n}, "
        f"device='cpu', BLOCK_SIZE={bs})",
    ]
    return "\n".join(lines) + "\n"


def _few_ticks(*axes: Axis) -> None:
    """At most 6 round token positions (0, 100, ... 500; 0, 1000, ... 4000): they read well,
    and their labels are all drawn again when n changes (see _View)."""
    for axis in axes:
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], integer=True))


class _ReachPlot:
    """Left: who reaches query i after 0..L layers; right: pairs connected per layer."""

    def __init__(self, fig: Figure):
        self.left, self.right = fig.subplots(1, 2, width_ratios=[2, 1])
        self.image = None
        self.query_line = self.left.axvline(0, color="tab:red", lw=0.8)
        self.left.set(xlabel="source position j", ylabel="layers")
        self.left.yaxis.set_major_locator(MaxNLocator(integer=True))
        _few_ticks(self.left.xaxis)
        (self.curve,) = self.right.plot([], [], marker="o", ms=3)
        self.right.set(title="pairs (i, j) connected", xlabel="layers", ylabel="fraction")
        self.right.xaxis.set_major_locator(MaxNLocator(integer=True))

    def update(
        self, n: int, layers: int, i: int, receptive: torch.Tensor, fractions: torch.Tensor
    ) -> list[Artist]:
        """Show `receptive` (L + 1, n) bool and `fractions` (L + 1,); returns what changed."""
        extent = (-0.5, n - 0.5, layers + 0.5, -0.5)
        if self.image is None:
            self.image = self.left.imshow(
                receptive.numpy(),
                aspect="auto",
                cmap="Blues",
                vmin=0,
                vmax=1,
                interpolation="nearest",
                extent=extent,
            )
        else:
            self.image.set_data(receptive.numpy())
            self.image.set_extent(extent)
        self.left.set(xlim=extent[:2], ylim=extent[2:])
        self.query_line.set_xdata([i, i])
        self.left.set_title(f"positions whose information reaches query {i} (red)")
        self.curve.set_data(range(layers + 1), fractions.numpy())
        # matplotlib's default 5 % margins around the layers, and room above a fraction of 1
        self.right.set(xlim=(-0.05 * layers, 1.05 * layers), ylim=(0, 1.05))
        return [self.image, self.query_line, self.left.title, self.curve]


class MaskExplorer:
    """Sliders for a sparse pattern, and live views of its mask, cost and reach.

    Display it as the last expression of a cell. Controls are in ``controls`` (set their
    ``value`` from code; ``with explorer.hold(): ...`` batches several changes into one
    update). The state of the last update: ``pattern``, ``stats``, ``receptive``,
    ``reach_fractions``, ``connect_layers`` (after ``wait()``: reachability is computed on a
    worker thread when it is not cached), ``weights``, ``timings`` (seconds per view) and
    ``error`` (the message shown; "" when the settings are valid).
    """

    def __init__(self, **values):
        style = {"description_width": "120px"}
        slider = dict(continuous_update=False, style=style)  # update on release
        self.controls: dict[str, widgets.ValueWidget] = {
            "pattern": widgets.Dropdown(
                options=list(PATTERNS.items()), value="bigbird", description="pattern", style=style
            ),
            "causal": widgets.Checkbox(value=False, description="causal", style=style),
            "seq_len": widgets.IntText(value=1024, description="seq_len", style=style),
            "block_size": widgets.Dropdown(
                options=[16, 32, 64, 128], value=64, description="block size", style=style
            ),
            "window": widgets.IntSlider(256, 2, 2048, 2, description="window (tokens)", **slider),
            "dilation": widgets.IntSlider(2, 1, 16, description="dilation", **slider),
            "global_tokens": widgets.IntSlider(2, 0, 256, description="global tokens", **slider),
            "window_blocks": widgets.IntSlider(3, 1, 15, 2, description="window blocks", **slider),
            "global_blocks": widgets.IntSlider(2, 0, 8, description="global blocks", **slider),
            "random_blocks": widgets.IntSlider(3, 0, 8, description="random blocks", **slider),
            "seed": widgets.IntSlider(0, 0, 99, description="seed", **slider),
            "head": widgets.IntSlider(0, 0, HEADS - 1, description="head", **slider),
            "layers": widgets.IntSlider(2, 1, 32, description="layers", **slider),
            "query": widgets.IntSlider(512, 0, 1023, description="query", **slider),
        }
        for name, control in self.controls.items():
            control.add_class(f"sae-{name}")  # stable hooks for the browser test
        self.message = widgets.HTML().add_class("sae-message")
        # Shown at their pixel size (inches x DPI): neither squeezed nor blown up.
        self.mask_image, self.reach_image, self.weights_image = (
            widgets.Image(format="png", width=str(int(FIGSIZE[view][0] * DPI))).add_class(
                f"sae-{view}"
            )
            for view in ("mask", "reach", "weights")
        )
        self.stats_html = widgets.HTML().add_class("sae-stats")
        self.reach_html = widgets.HTML().add_class("sae-reach-text")
        self.export = widgets.Textarea(
            layout=widgets.Layout(width="98%", height="300px"), disabled=True
        ).add_class("sae-export")
        wrap = widgets.Layout(flex_flow="row wrap")  # narrow pages put views below controls
        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [
                        widgets.VBox(
                            [*self.controls.values(), self.message],
                            layout=widgets.Layout(width="380px"),
                        ),
                        widgets.VBox([self.mask_image, self.stats_html]),
                    ],
                    layout=wrap,
                ),
                widgets.HBox([self.reach_image, self.reach_html], layout=wrap),
                self.weights_image,
                widgets.HTML(
                    "<b>Export</b>: the pattern as Python, and as a FlexAttention mask_mod"
                ),
                self.export,
            ]
        )

        self.pattern: patterns.Pattern | None = None
        self.stats: dict = {}
        self.receptive: torch.Tensor | None = None
        self.reach_fractions: torch.Tensor | None = None
        self.connect_layers: float = math.nan
        self.weights: torch.Tensor | None = None
        self.error = ""
        self.timings: dict[str, float] = {}
        # One figure per view, made once and updated in place (see _View).
        self._views = {
            "mask": _View(
                FIGSIZE["mask"], left=0.07, right=0.95, top=0.88, bottom=0.22, wspace=0.3
            ),
            "reach": _View(
                FIGSIZE["reach"], left=0.07, right=0.98, top=0.9, bottom=0.17, wspace=0.2
            ),
            "weights": _View(FIGSIZE["weights"], left=0.07, right=0.87, top=0.88, bottom=0.2),
        }
        self.figures: dict[str, Figure] = {name: view.figure for name, view in self._views.items()}
        left, right = self.figures["mask"].subplots(1, 2)
        self._token_plot = viz.MaskPlot(left)
        # In tokens: another block size keeps the axes, hence their ticks (see _View).
        self._kinds_plot = viz.BlockKindsPlot(right, in_tokens=True)
        self._reach_plot = _ReachPlot(self.figures["reach"])
        weights_ax = self.figures["weights"].subplots()
        self._weights_plot = viz.QueryWeightsPlot(weights_ax)
        _few_ticks(left.xaxis, left.yaxis, right.xaxis, right.yaxis, weights_ax.xaxis)
        # Axis labels at fixed places (where they fall beside 4-digit tick labels): placed
        # automatically, every tick label of the figure is measured again on each redraw.
        for ax, below, beside in ((left, -0.09, -0.13), (right, -0.095, -0.165)):
            ax.xaxis.set_label_coords(0.5, below)
            ax.yaxis.set_label_coords(beside, 0.5)
        weights_ax.xaxis.set_label_coords(0.5, -0.18)
        # The legend goes beside the axes, off the data, so it stays in the background.
        weights_ax.yaxis.set_label_coords(-0.065, 0.5)
        weights_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        self._patterns = _LRU(16)
        self._receptive = _LRU(64)
        self._fractions = _LRU(64)
        self._connect = _LRU(16)
        self._qk = _LRU(4)
        # Reachability may take seconds: one worker thread computes it, one lock keeps
        # matplotlib drawing to one thread at a time.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask-explorer")
        self._reach_job: Future | None = None
        self._reach_token: object | None = None
        self._draw_lock = threading.Lock()
        self._held = False
        self._on_screen: dict[str, tuple] = {}  # the inputs each view was drawn from
        self._pending = False  # a change arrived while held

        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(
                f"expected control names in {list(self.controls)}, got {sorted(unknown)}"
            )
        with self.hold():
            # The query slider clamps to its range: give it the range of the seq_len asked for.
            seq_len = values.get("seq_len", self.controls["seq_len"].value)
            if isinstance(seq_len, int) and seq_len > 0:
                self.controls["query"].max = seq_len - 1
            for name, value in values.items():
                self.controls[name].value = value
            self._pending = True  # the first draw
        for control in self.controls.values():
            control.observe(self._changed, names="value")

    # ---- display and batching ---------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        """Close every widget of the explorer (freed in the frontend too) and its worker thread."""
        self.wait()
        self._worker.shutdown()

        def close_tree(widget: widgets.Widget) -> None:
            for child in getattr(widget, "children", ()):
                close_tree(child)
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                if part is not None:
                    part.close()
            widget.close()

        close_tree(self.widget)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Set several controls inside the block; the views update once, at its end."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
            pending, self._pending = self._pending, False
            if pending:
                self._update()

    def _changed(self, change: dict) -> None:
        if self._held:
            self._pending = True
        else:
            self._update()

    @property
    def settings(self) -> dict:
        """The controls' current values, by name."""
        return {name: control.value for name, control in self.controls.items()}

    # ---- the update ---------------------------------------------------------------------
    def _update(self) -> None:
        """Redraw the views whose inputs changed since they were drawn."""
        start = time.perf_counter()
        self.timings = {}
        settings = self.settings
        self._show_controls(settings["pattern"])
        # The explorer's tensors are small: torch's thread pool costs more than it saves.
        with propagation._one_thread():
            try:
                key = self._pattern_key(settings)
                pattern = self._patterns.get_or(key, lambda: build_pattern(settings))
                # Keep the query on the sequence; the slider's own clamp is one more update.
                with self._quiet():
                    self.controls["query"].max = pattern.seq_len - 1
                settings["query"] = self.controls["query"].value
                self.pattern = pattern
                head, query, layers = settings["head"], settings["query"], settings["layers"]
                # What each view shows is a function of these inputs: skip it when they match.
                if self._stale("mask", key, head, settings["block_size"]):
                    with self._draw_lock:
                        self._draw_mask(pattern, settings)
                    self._draw_stats(pattern, settings)
                    self.export.value = python_source(pattern) + "\n\n" + mask_mod_source(settings)
                if self._stale("weights", key, head, query):
                    with self._draw_lock:
                        self._draw_weights(pattern, settings)
                # Last: an uncached reach starts on the worker once the other views are drawn.
                if self._stale("reach", key, layers, query):
                    self._draw_reach(pattern, key, settings)
            except (ValueError, TypeError) as exc:  # invalid settings: say why, keep the views
                self._show_error(exc)
                return
        self.error = ""
        self.timings["total"] = time.perf_counter() - start
        self.message.value = (
            f"<span style='color:#555'>updated in {1000 * self.timings['total']:.0f} ms</span>"
        )

    def _show_error(self, exc: Exception) -> None:
        self.error = str(exc)
        self.message.value = f"<span style='color:#b00020'>&#9888; {html.escape(self.error)}</span>"

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Changes made by the update itself do not trigger another update."""
        held, pending = self._held, self._pending
        self._held = True
        try:
            yield
        finally:
            self._held, self._pending = held, pending

    def _stale(self, view: str, *inputs) -> bool:
        """True (and remembered as drawn) when `view` last showed other inputs."""
        if self._on_screen.get(view) == inputs:
            return False
        self._on_screen[view] = inputs
        return True

    def _pattern_key(self, settings: dict) -> tuple:
        """The settings the pattern depends on (BigBird's blocks are its own block size)."""
        used = self.USES[settings["pattern"]] - {"head"}
        if settings["pattern"] == "bigbird":
            used.add("block_size")
        names = ["pattern", "causal", "seq_len", *sorted(used)]
        return tuple((name, settings[name]) for name in names)

    def _show_controls(self, kind: str) -> None:
        hidden = set().union(*self.USES.values()) - self.USES[kind]
        for name, control in self.controls.items():
            control.layout.display = "none" if name in hidden else None

    # Controls each pattern uses; the others are hidden.
    USES = {
        "sliding_window": {"window"},
        "dilated_window": {"window", "dilation"},
        "longformer": {"window", "global_tokens"},
        "bigbird": {"window_blocks", "global_blocks", "random_blocks", "seed", "head"},
    }

    # ---- views --------------------------------------------------------------------------
    def _draw_mask(self, pattern: patterns.Pattern, settings: dict) -> None:
        """Left: the token mask (a zoom on the first tokens at large n); right: block kinds."""
        t = time.perf_counter()
        n, bs, head = pattern.seq_len, settings["block_size"], settings["head"]
        zoom = min(n, MAX_IMAGE_TOKENS)
        idx = torch.arange(zoom)
        tokens = pattern.allows(idx.view(-1, 1), idx.view(1, -1), head)  # (zoom, zoom)
        title = "token mask" if zoom == n else f"token mask: zoom on tokens 0..{zoom - 1} of {n}"
        changed = self._token_plot.update(tokens, block_size=bs, title=title)
        changed += self._kinds_plot.update(
            pattern, bs, head, title=f"block kinds of all {n} tokens, block {bs}"
        )
        self.mask_image.value = self._views["mask"].png(changed)
        self.timings["mask"] = time.perf_counter() - t

    def _draw_stats(self, pattern: patterns.Pattern, settings: dict) -> None:
        t = time.perf_counter()
        s = self.stats = viz.pattern_stats(
            pattern, block_size=settings["block_size"], head_dim=HEAD_DIM
        )
        tiles = f"{s['num_blocks']}²"
        if s["num_heads"] > 1:
            tiles += f" x {s['num_heads']} heads"
        rows = [
            ("density", f"{100 * s['density']:.2f} % of the n² pairs"),
            ("active tiles", f"{s['active_blocks']} of {tiles}"),
            ("", f"{s['partial_blocks']} partial, {s['full_blocks']} full"),
            ("FLOPs, dense", f"{s['dense_flops']:.3g}"),
            ("FLOPs, allowed pairs", f"{s['sparse_flops']:.3g}"),
            ("FLOPs, active tiles", f"{s['block_flops']:.3g}"),
            ("scores, dense", _bytes(s["dense_score_bytes"])),
            ("scores, active tiles", _bytes(s["block_score_bytes"])),
            ("ideal speed-up", f"{s['ideal_speedup']:.1f}x (block kernel over dense)"),
        ]
        body = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
        self.stats_html.value = (
            f"<table><caption>cost of one head_dim={HEAD_DIM} attention, "
            f"block {settings['block_size']}</caption>{body}</table>"
        )
        self.timings["stats"] = time.perf_counter() - t

    def _draw_reach(self, pattern: patterns.Pattern, key: tuple, settings: dict) -> None:
        """Reachability: drawn now when cached, else computed on the worker thread.

        Propagation through many layers can take seconds (an intersection with the causal
        mask at n = 4096): the other views must not wait for it.
        """
        layers, i = settings["layers"], settings["query"]
        token = self._reach_token = object()  # the settings now on screen
        if self._reach_job is not None:
            self._reach_job.cancel()  # not started yet: nobody will look at it

        def job() -> None:
            t = time.perf_counter()
            try:
                with propagation._one_thread():  # small ops: see _update
                    receptive = self._receptive.get_or(
                        (key, layers, i), lambda: propagation.receptive_field(pattern, i, layers)
                    )  # (L + 1, n)
                    fractions = self._fractions.get_or(
                        (key, layers), lambda: propagation.fraction_reachable(pattern, layers)
                    )  # (L + 1,)
                    connect = self._connect.get_or(
                        key, lambda: propagation.layers_to_connect(pattern)
                    )
            except (ValueError, TypeError) as exc:
                self._show_error(exc)
                return
            with self._draw_lock:
                if token is self._reach_token:  # still wanted: draw it
                    self._show_reach(pattern.seq_len, layers, i, receptive, fractions, connect)
            self.timings["reach"] = time.perf_counter() - t

        if (
            (key, layers, i) in self._receptive
            and (key, layers) in self._fractions
            and (key in self._connect)
        ):
            job()
        else:
            self.reach_html.value = "<p><i>computing reachability ...</i></p>"
            self._reach_job = self._worker.submit(job)

    def _show_reach(self, n, layers, i, receptive, fractions, connect) -> None:
        self.receptive, self.reach_fractions, self.connect_layers = receptive, fractions, connect
        changed = self._reach_plot.update(n, layers, i, receptive, fractions)
        self.reach_image.value = self._views["reach"].png(changed)
        when = (
            "never (some pair is never connected)"
            if math.isinf(connect)
            else f"after <b>{connect}</b> layers"
        )
        self.reach_html.value = (
            f"<p>after <b>{layers}</b> layers, <b>{100 * float(fractions[-1]):.1f} %"
            f"</b> of the (query, key) pairs are connected;<br>every pair is connected {when}</p>"
        )

    def wait(self, timeout: float | None = None) -> None:
        """Block until the reachability view shows the current settings."""
        if self._reach_job is not None:
            self._reach_job.result(timeout)

    def _draw_weights(self, pattern: patterns.Pattern, settings: dict) -> None:
        """One query's attention weights on random q, k: stage 2's masked softmax."""
        t = time.perf_counter()
        n, i, head = pattern.seq_len, settings["query"], settings["head"]
        q, k = self.random_qk(n)
        allowed = pattern.allows(torch.tensor(i), torch.arange(n), head)  # (n,)
        scores = (k @ q[i]) / math.sqrt(HEAD_DIM)  # (n,) q_i . k_j / sqrt(d)
        self.weights = masked.masked_softmax(scores.view(1, n), allowed.view(1, n))[0]
        changed = self._weights_plot.update(
            self.weights, allowed, i, title=f"head {head}, query {i}"
        )
        self.weights_image.value = self._views["weights"].png(changed)
        self.timings["weights"] = time.perf_counter() - t

    def random_qk(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights view's q, k: (n, HEAD_DIM) each, standard normal, seeded by QK_SEED."""

        def draw():
            gen = torch.Generator().manual_seed(QK_SEED)
            return torch.randn(n, HEAD_DIM, generator=gen), torch.randn(n, HEAD_DIM, generator=gen)

        return self._qk.get_or(n, draw)


def _bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.4g} {unit}"
        count /= 1024
    return f"{count:.4g} GiB"
