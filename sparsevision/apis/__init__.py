"""Inferencers used by demo/ and by users: load a model and checkpoint, run, visualise."""
from .image_classification import SAMPLE_PHOTOS, ImageClassificationInferencer
from .token_visualization import TokenRouting, draw_token_routing, routes_tokens, save_token_maps, trace_token_routing

__all__ = ['SAMPLE_PHOTOS', 'ImageClassificationInferencer', 'TokenRouting', 'draw_token_routing', 'routes_tokens',
           'save_token_maps', 'trace_token_routing']
