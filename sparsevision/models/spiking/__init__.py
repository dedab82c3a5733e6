"""Spiking neurons (IF, LIF, PLIF, multi-spike), their surrogate gradients and firing monitors."""
from .monitors import FiringMonitor
from .neurons import IFNeuron, LIFNeuron, MembraneNeuron, MultiSpikeNeuron, PLIFNeuron, SpikingNeuron
from .surrogate import (SURROGATES, ATanSurrogate, RectangleSurrogate, SigmoidSurrogate, Surrogate,
                        TriangleSurrogate, build_surrogate, register_surrogate)

__all__ = ['ATanSurrogate', 'FiringMonitor', 'IFNeuron', 'LIFNeuron', 'MembraneNeuron', 'MultiSpikeNeuron',
           'PLIFNeuron', 'RectangleSurrogate', 'SURROGATES', 'SigmoidSurrogate', 'SpikingNeuron', 'Surrogate',
           'TriangleSurrogate', 'build_surrogate', 'register_surrogate']
