"""Inferencers used by demo/ and by users: load a model and checkpoint, run, visualise."""
from .image_classification import SAMPLE_PHOTOS, ImageClassificationInferencer, sample_photo
from .masked_reconstruction import MaskedReconstructionInferencer, save_reconstruction_figure
from .model_kinds import check_model_kind, model_kind
from .output_set import StagedOutputs, output_set
from .token_visualization import TokenRouting, draw_token_routing, routes_tokens, save_token_maps, trace_token_routing

__all__ = ['SAMPLE_PHOTOS', 'ImageClassificationInferencer', 'MaskedReconstructionInferencer', 'StagedOutputs',
           'TokenRouting', 'check_model_kind', 'draw_token_routing', 'model_kind', 'output_set', 'routes_tokens',
           'sample_photo', 'save_reconstruction_figure', 'save_token_maps', 'trace_token_routing']
