"""Firing rates, synaptic operations and energy of a trained spiking model on its validation data.

    python tools/analysis/spiking_energy.py CONFIG CHECKPOINT [--batches N] [--preset 45nm_fp32] [--json PATH]

Runs the model in eval mode over the first N validation batches (all by default) with a FiringMonitor (per neuron
layer: firing rate, mean spikes, active-site ratio) and an OperationCounter (per convolution/linear layer: dense and
spike-triggered operations), prints both and the energy report: the first layer and layers fed real values cost
multiply-accumulates, layers fed spikes cost accumulates (45 nm constants by default), against an ANN twin that runs
every layer densely once.
"""
import argparse
import json
from pathlib import Path

import torch
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from sparsevision.model_zoo import create_model, load_config  # noqa: E402
from sparsevision.models.spiking import FiringMonitor, OperationCounter, energy_report  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file or zoo model name')
    parser.add_argument('checkpoint', help='trained weights')
    parser.add_argument('--batches', type=int, default=None, help='validation batches to run (default: all)')
    parser.add_argument('--preset', default='45nm_fp32', help='energy constants (45nm_fp32, 45nm_fp16, 45nm_int8)')
    parser.add_argument('--json', type=Path, help='also write the numbers as JSON')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args.config)
    model = create_model(cfg, checkpoint=args.checkpoint).eval()
    with DefaultScope.overwrite_default_scope('sparsevision'):
        loader = Runner.build_dataloader(cfg.val_dataloader)
    correct = seen = 0
    with torch.no_grad(), FiringMonitor(model) as firing, OperationCounter(model) as operations:
        for index, batch in enumerate(loader):
            if args.batches is not None and index >= args.batches:
                break
            for sample in model(**model.data_preprocessor(batch, False), mode='predict'):
                if 'pred_seg' in sample:   # segmentation: site accuracy
                    correct += (sample.pred_seg == sample.gt_seg).float().mean().item()
                else:
                    correct += int(sample.pred_label == sample.gt_label)
                seen += 1
    time_steps = getattr(model.backbone, 'time_steps', 1)
    report = energy_report(operations, args.preset, time_steps=time_steps)
    rates = firing.summary()
    print(f'{args.config}: accuracy {100 * correct / seen:.2f} % (top-1, or mean site accuracy for segmentation) on '
          f'{seen} validation samples; T = {time_steps}\n')
    print('firing rates (share of non-zero neuron outputs):')
    for name, layer in rates.items():
        sites = f', active sites {layer["active_site_ratio"]:.3f}' if 'active_site_ratio' in layer else ''
        print(f'  {name:<45} {layer["firing_rate"]:.3f} (mean spikes {layer["mean_spikes"]:.3f}{sites})')
    print(f'  mean over layers: {sum(layer["firing_rate"] for layer in rates.values()) / len(rates):.3f}\n')
    print(report.table())
    print(f'per sample: {report.energy_joules / seen * 1e6:.3f} uJ spiking vs '
          f'{report.ann_energy_joules / seen * 1e6:.3f} uJ ANN twin; {report.synaptic_ops / seen:.3e} SOPs and '
          f'{report.macs / seen:.3e} MACs')
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            config=args.config, top1=100 * correct / seen, samples=seen, time_steps=time_steps, firing=rates,
            energy_per_sample_joules=report.energy_joules / seen,
            ann_energy_per_sample_joules=report.ann_energy_joules / seen,
            macs=report.macs, synaptic_ops=report.synaptic_ops, energy_joules=report.energy_joules,
            ann_energy_joules=report.ann_energy_joules, energy_ratio=report.energy_ratio), indent=2, default=float))


if __name__ == '__main__':
    main()
