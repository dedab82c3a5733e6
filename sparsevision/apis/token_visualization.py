"""Token maps: which patches a token-pruning ViT keeps, drops or merges at each reduction stage."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .image_classification import ImageClassificationInferencer, ImageInput, save_atomically

DROPPED_RGBA = (0.0, 0.0, 0.0, 0.7)
MERGED_ALPHA = 0.55
GROUP_COLOURS = colormaps['tab20'].colors[0::2] + colormaps['tab20'].colors[1::2]   # strong colours first


@dataclass
class TokenRouting:
    """Where each patch of one image went, stage by stage.

    Attributes:
        pixels: the model's input image, ``[H, W]`` or ``[H, W, 3]`` in [0, 1].
        grid_size: patch rows and columns.
        carriers: per reduction stage, ``[rows, cols]`` row of the token sequence carrying each patch
            (``-1`` once dropped; patches merged into one token share a row).
        method: the router's name, e.g. ``'EViTRouter'``.
    """

    pixels: np.ndarray
    grid_size: Tuple[int, int]
    carriers: List[np.ndarray]
    method: str


def routes_tokens(model: torch.nn.Module) -> bool:
    """Whether ``model``'s backbone is a token-pruning ViT (has ``forward_with_state``)."""
    return hasattr(getattr(model, 'backbone', None), 'forward_with_state')


@torch.no_grad()
def trace_token_routing(inferencer: ImageClassificationInferencer,
                        images: Sequence[ImageInput]) -> List[TokenRouting]:
    """Run the inferencer's token-pruning backbone on ``images`` and record each image's routing."""
    backbone = inferencer.model.backbone
    if not routes_tokens(inferencer.model):
        raise ValueError(f'{type(backbone).__name__} does not route tokens: token maps need a token-pruning '
                         'backbone (EViT, DynamicViT, ToMe, SpAtten)')
    samples = inferencer.prepare(images)
    _, state = backbone.forward_with_state(inferencer.collate(samples)['inputs'])
    grid_size = tuple(backbone.patch_embed.grid_size)
    history = [stage.cpu().numpy().reshape(-1, *grid_size) for stage in state.history]
    routings = []
    for index, sample in enumerate(samples):
        pixels = sample['inputs'].numpy().transpose(1, 2, 0)
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
        routings.append(TokenRouting(pixels=np.clip(pixels, 0, 1), grid_size=grid_size,
                                     carriers=[stage[index] for stage in history],
                                     method=type(backbone.router).__name__))
    return routings


def patch_overlay(carriers: np.ndarray) -> np.ndarray:
    """RGBA ``[rows, cols, 4]`` drawn over one stage: dark for dropped patches, one colour per merged
    token (numbered in row-major order of first appearance), transparent for patches kept alone."""
    overlay = np.zeros((*carriers.shape, 4))
    overlay[carriers < 0] = DROPPED_RGBA
    tokens, patch_counts = np.unique(carriers[carriers >= 0], return_counts=True)
    merged_tokens = set(tokens[patch_counts > 1].tolist())
    colour_of_token = {}
    for position, token in np.ndenumerate(carriers):
        if token in merged_tokens:
            colour = colour_of_token.setdefault(token, GROUP_COLOURS[len(colour_of_token) % len(GROUP_COLOURS)])
            overlay[position] = (*colour, MERGED_ALPHA)
    return overlay


def merge_outlines(carriers: np.ndarray) -> List[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """Segments ``((x0, y0), (x1, y1))`` in patch units outlining every token that carries several patches."""
    tokens, patch_counts = np.unique(carriers[carriers >= 0], return_counts=True)
    merged = np.isin(carriers, tokens[patch_counts > 1])
    padded_carriers = np.pad(carriers, 1, constant_values=-2)   # -2: outside the image
    padded_merged = np.pad(merged, 1)
    segments = []
    for row, col in zip(*np.nonzero(merged)):
        here = padded_carriers[row + 1, col + 1]
        for step_row, step_col, edge in ((-1, 0, ((col, row), (col + 1, row))),
                                         (1, 0, ((col, row + 1), (col + 1, row + 1))),
                                         (0, -1, ((col, row), (col, row + 1))),
                                         (0, 1, ((col + 1, row), (col + 1, row + 1)))):
            neighbour = padded_carriers[row + 1 + step_row, col + 1 + step_col]
            # an edge between two merged tokens is drawn once: by the upper or left patch of the pair
            neighbour_merged = padded_merged[row + 1 + step_row, col + 1 + step_col]
            if neighbour != here and not (neighbour_merged and (step_row < 0 or step_col < 0)):
                segments.append(edge)
    return segments


def stage_caption(carriers: np.ndarray) -> str:
    """How many tokens carry patches (prefix tokens and EViT's fused token are not counted), then how many
    patches were dropped and merged."""
    tokens, patch_counts = np.unique(carriers[carriers >= 0], return_counts=True)
    details = []
    dropped = int((carriers < 0).sum())
    if dropped:
        details.append(f'{counted(dropped, "patch")} dropped')
    merged = patch_counts[patch_counts > 1]
    if len(merged):
        details.append(f'{counted(int(merged.sum()), "patch")} in {counted(len(merged), "merged token")}')
    return f'{counted(len(tokens), "token")}\n' + ('\n'.join(details) or 'all patches kept')


def counted(count: int, noun: str) -> str:
    """``'1 patch'``, ``'3 patches'``, ``'2 merged tokens'``."""
    plural = noun + ('es' if noun.endswith(('ch', 'sh', 's', 'x')) else 's')
    return f'{count} {noun if count == 1 else plural}'


def draw_token_routing(routing: TokenRouting, prediction: dict, title: Optional[str] = None) -> Figure:
    """One row of panels: the input, then each stage's kept (plain), dropped (dark, hatched) and merged
    (one colour and outline per token) patches, under the prediction."""
    stages = len(routing.carriers)
    rows, cols = routing.grid_size
    figure = Figure(figsize=(2.4 * (stages + 1), 3.3), layout='constrained')
    axes = figure.subplots(1, stages + 1, squeeze=False)[0]
    image_style = dict(cmap='gray' if routing.pixels.ndim == 2 else None, vmin=0, vmax=1,
                       extent=(0, cols, rows, 0), interpolation='nearest')
    axes[0].imshow(routing.pixels, **image_style)
    axes[0].set_title(f'input\n{rows * cols} patches', fontsize=8.5)
    for stage, (axis, carriers) in enumerate(zip(axes[1:], routing.carriers), start=1):
        axis.imshow(routing.pixels, **image_style)
        axis.imshow(patch_overlay(carriers), extent=(0, cols, rows, 0), interpolation='nearest')
        for row, col in zip(*np.nonzero(carriers < 0)):
            axis.add_patch(Rectangle((col, row), 1, 1, fill=False, hatch='////', edgecolor='0.55', linewidth=0))
        axis.add_collection(LineCollection(merge_outlines(carriers), colors='white', linewidths=1.4))
        axis.set_title(f'stage {stage}: {stage_caption(carriers)}', fontsize=8.5)
    for axis in axes:
        axis.set_xticks(np.arange(cols + 1))
        axis.set_yticks(np.arange(rows + 1))
        axis.grid(color='0.6', linewidth=0.4, alpha=0.6)
        axis.tick_params(length=0, labelbottom=False, labelleft=False)
        axis.set_xlim(0, cols)
        axis.set_ylim(rows, 0)
    heading = f'predicted {prediction["pred_class"]} (score {prediction["pred_score"]:.2f}), {routing.method}'
    figure.suptitle(heading if title is None else f'{title}: {heading}', fontsize=10)
    legend = [Patch(facecolor='none', edgecolor='0.6', label='kept')]
    if any((carriers < 0).any() for carriers in routing.carriers):
        legend.append(Patch(facecolor=DROPPED_RGBA, hatch='////', edgecolor='0.55', label='dropped'))
    if any(len(np.unique(carriers[carriers >= 0])) < (carriers >= 0).sum() for carriers in routing.carriers):
        legend.append(Patch(facecolor=GROUP_COLOURS[0], edgecolor='white', label='merged: one colour per token'))
    figure.legend(handles=legend, loc='outside lower center', ncol=len(legend), fontsize=8, frameon=False)
    return figure


def save_token_maps(inferencer: ImageClassificationInferencer, images: Sequence[ImageInput],
                    predictions: Sequence[dict], out_dir: Union[str, Path],
                    titles: Optional[Sequence[str]] = None) -> List[Path]:
    """Draw every image's token map and write it as ``<out_dir>/<index>_<title>.png``, each file atomically.

    All images are routed and drawn before the first file is written.
    """
    titles = titles or [f'image{index}' for index in range(len(images))]
    routings = trace_token_routing(inferencer, images)
    figures = [draw_token_routing(routing, prediction, title)
               for routing, prediction, title in zip(routings, predictions, titles)]
    return [save_atomically(Path(out_dir) / f'{index:02d}_{title}.png',
                            lambda path, figure=figure: figure.savefig(path, dpi=100, format='png'))
            for index, (figure, title) in enumerate(zip(figures, titles))]
