"""Inferencers used by demo/ and by users: load a model and checkpoint, run, visualise."""
from .image_classification import SAMPLE_PHOTOS, ImageClassificationInferencer, sample_photo
from .masked_reconstruction import MaskedReconstructionInferencer, save_reconstruction_figure
from .token_visualization import TokenRouting, draw_token_routing, routes_tokens, save_token_maps, trace_token_routing

__all__ = ['SAMPLE_PHOTOS', 'ImageClassificationInferencer', 'MaskedReconstructionInferencer', 'TokenRouting',
           'draw_token_routing', 'routes_tokens', 'sample_photo', 'save_reconstruction_figure', 'save_token_maps',
           'trace_token_routing']
