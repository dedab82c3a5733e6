"""Spiking networks: neurons and surrogate gradients, E-3DSNN and Meta-SpikeFormer, firing and energy monitors."""
from .e3dsnn import E3DSNN, E3DSNNUNet
from .energy import (ENERGY_PRESETS, EnergyModel, EnergyReport, LayerEnergy, OperationCounter, energy_model,
                     energy_report)
from .meta_spikeformer import MetaSpikeFormer
from .monitors import FiringMonitor
from .neurons import IFNeuron, LIFNeuron, MembraneNeuron, MultiSpikeNeuron, PLIFNeuron, SpikingNeuron
from .surrogate import (SURROGATES, ATanSurrogate, RectangleSurrogate, SigmoidSurrogate, Surrogate,
                        TriangleSurrogate, build_surrogate, register_surrogate)

__all__ = ['ATanSurrogate', 'E3DSNN', 'E3DSNNUNet', 'ENERGY_PRESETS', 'EnergyModel', 'EnergyReport', 'FiringMonitor',
           'IFNeuron', 'LIFNeuron', 'LayerEnergy', 'MembraneNeuron', 'MetaSpikeFormer', 'MultiSpikeNeuron',
           'OperationCounter', 'PLIFNeuron', 'RectangleSurrogate', 'SURROGATES', 'SigmoidSurrogate', 'SpikingNeuron',
           'Surrogate', 'TriangleSurrogate', 'build_surrogate', 'energy_model', 'energy_report', 'register_surrogate']
