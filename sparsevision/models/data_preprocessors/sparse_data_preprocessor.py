"""Collate point-cloud samples into one batched SparseTensor."""
import torch
from mmengine.model import BaseDataPreprocessor

from ...registry import MODELS
from ...sparse import SparseTensor


@MODELS.register_module()
class SparseDataPreprocessor(BaseDataPreprocessor):
    """Samples packed by ``PackPointCloudInputs`` -> ``SparseTensor`` (batch index first), on the model's device.

    The grid is the largest ``spatial_shape`` of the batch, per axis.
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if isinstance(inputs, SparseTensor):   # already collated
            return data
        if isinstance(inputs, dict):   # mmengine's pseudo_collate: a dict of per-sample lists
            coordinates, features, shapes = inputs['coordinates'], inputs['features'], inputs['spatial_shape']
            shapes = [max(int(size) for size in axis) for axis in shapes]
        else:
            coordinates = [sample['coordinates'] for sample in inputs]
            features = [sample['features'] for sample in inputs]
            shapes = [max(int(sample['spatial_shape'][axis]) for sample in inputs)
                      for axis in range(len(inputs[0]['spatial_shape']))]
        if not coordinates:
            raise ValueError('SparseDataPreprocessor got an empty batch')
        indices = torch.cat([torch.cat([torch.full_like(c[:, :1], b), c], dim=1) for b, c in enumerate(coordinates)])
        return dict(inputs=SparseTensor(torch.cat(features), indices.int(), shapes, len(coordinates)),
                    data_samples=data.get('data_samples'))
