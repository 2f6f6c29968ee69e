"""Progress of a training run in the notebook (or terminal): a progress bar and, in a Jupyter
kernel, a live loss plot (an SVG line redrawn after each epoch or round)."""

from __future__ import annotations

import html

from tqdm.auto import tqdm


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def loss_svg(losses: list[float], width: int = 360, height: int = 120) -> str:
    """A loss curve as an inline SVG: one point per epoch or round, the y axis from 0 to the
    largest loss."""
    if not losses:
        return ""
    top = max(max(losses), 1e-12)
    step = width / max(len(losses) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - height * v / top:.1f}" for i, v in enumerate(losses))
    return (f'<svg width="{width}" height="{height + 16}" style="overflow:visible">'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{points}"/>'
            f'<text x="0" y="{height + 14}" font-size="11">{html.escape(f"loss {losses[-1]:.4g} (max {top:.3g})")}'
            f"</text></svg>")


class TrainingMonitor:
    """A progress bar over ``total`` steps, and a loss plot over epochs or rounds."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled)
        self.losses: list[float] = []
        self.plot = None
        if enabled and _in_kernel():
            import ipywidgets as widgets
            from IPython.display import display

            self.plot = widgets.HTML()
            display(self.plot)

    def step(self, n: int = 1, loss: float | None = None) -> None:
        self.bar.update(n)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}")

    def point(self, loss: float) -> None:
        """The loss of one finished epoch or round."""
        self.losses.append(loss)
        if self.plot is not None:
            self.plot.value = loss_svg(self.losses)

    def close(self) -> None:
        self.bar.close()
