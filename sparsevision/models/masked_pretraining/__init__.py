"""Sparse masked image modelling: SparK and ConvNeXt V2's FCMAE with encoders that compute at visible patches only."""
from .encoder import check_maskable, encode_masked
from .fcmae import FCMAE
from .feature_maps import MaskedFeatureMap
from .masked_autoencoder import MaskedAutoencoder, masked_patch_loss, patchify, unpatchify
from .masked_dense_map import MaskedDenseMap
from .masking import MaskPyramid, random_patch_mask
from .sparse_site_map import SparseSiteMap
from .spark import SparK

__all__ = ['FCMAE', 'MaskPyramid', 'MaskedAutoencoder', 'MaskedDenseMap', 'MaskedFeatureMap', 'SparK', 'SparseSiteMap',
           'check_maskable', 'encode_masked', 'masked_patch_loss', 'patchify', 'random_patch_mask', 'unpatchify']
