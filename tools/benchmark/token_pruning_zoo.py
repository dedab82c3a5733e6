"""Benchmark the shipped token-pruning digits models against the dense digits ViT they were fine-tuned from.

Peer: ``vit_tiny_p4_digits`` (a timm ViT, 128 wide, 6 blocks, 64 patch tokens) with its shipped weights. Ours:
the EViT, DynamicViT, ToMe and SpAtten fine-tunes with theirs (``configs/token_pruning/*_vit_tiny_p4_digits.py``).
Input: the real digits validation split (359 images, the configs' test pipeline), eval, ``torch.no_grad``,
float32, the backbones only (the data preprocessor runs once, outside the timing), batch sizes 1 and 64.

Each round times the dense model and every pruned model once (best of ``repetitions``), in an order reversed
every other round; ``ratio`` = ours/peer images/s, the median of the per-round ratios (**higher is better**).
``GMACs`` is the analytic count per image (``vit_macs``). ``match``: every logit is finite and the model's
top-1 on all 359 images, computed in the same run, is within 1 point of the dense model's (the accuracy
target of the fine-tunes). Follows ``/work/shared/BENCHMARKS.md``; rows also carry ``top1_ours``,
``top1_peer``, ``gmacs_ours`` and ``gmacs_peer``.

Usage::

    python tools/benchmark/token_pruning_zoo.py [--quick] [--threads 1 2] [--json PATH] [--device cpu|cuda]
"""
import os
import platform
import statistics
import sys

import torch
from mmengine.registry import DefaultScope

import sparsevision
from sparsevision.model_zoo import create_model, load_config
from sparsevision.models.token_pruning.flops import vit_macs
from sparsevision.registry import DATASETS

import protocol  # noqa: E402  (tools/benchmark/protocol.py, beside this script)

DENSE = 'vit_tiny_p4_digits'
PRUNED = ('evit_vit_tiny_p4_digits', 'dynamicvit_vit_tiny_p4_digits', 'tome_vit_tiny_p4_digits',
          'spatten_vit_tiny_p4_digits')
BATCHES = (1, 64)


def validation_inputs(model, device: str):
    """The preprocessed validation images ``[359, 1, 32, 32]`` and their labels."""
    cfg = load_config(DENSE)
    with DefaultScope.overwrite_default_scope('sparsevision'):
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
    samples = [dataset[index] for index in range(len(dataset))]
    data = model.data_preprocessor({'inputs': [sample['inputs'] for sample in samples],
                                    'data_samples': [sample['data_samples'] for sample in samples]}, False)
    labels = torch.tensor([int(sample.gt_label) for sample in data['data_samples']])
    return data['inputs'].to(device), labels.to(device)


def top1(backbone, images: torch.Tensor, labels: torch.Tensor):
    """``(top-1 in percent, all logits finite)`` over the whole validation split."""
    logits = torch.cat([backbone(chunk) for chunk in images.split(128)])
    return (logits.argmax(1) == labels).float().mean().item() * 100, bool(torch.isfinite(logits).all())


def run(models, images, labels, batch, threads, rounds, repetitions, device):
    torch.set_num_threads(threads)
    inputs = images[:batch]
    names = list(models)
    calls = {}
    for name in names:   # warm-up, and enough calls per repetition to fill ~0.1 s
        calls[name] = max(1, round(0.1 / protocol.best_time(lambda: models[name](inputs), 1, 2, device)))
    times = {name: [] for name in names}
    for round_number in range(rounds):
        for name in names[::-1] if round_number % 2 else names:
            times[name].append(protocol.best_time(lambda: models[name](inputs), calls[name], repetitions, device))
    dense_top1, _ = top1(models[DENSE], images, labels)
    dense_macs = vit_macs(models[DENSE], batch_images=inputs[:1])['total'] / 1e9
    rows = []
    for name in names[1:]:
        accuracy, finite = top1(models[name], images, labels)
        ratios = [dense / ours for dense, ours in zip(times[DENSE], times[name])]
        ours_s, peer_s = statistics.median(times[name]), statistics.median(times[DENSE])
        rows.append({
            'case': f'{name}, batch {batch}, {threads} thread{"s" if threads > 1 else ""} (img/s)',
            'threads': threads, 'batch': batch, 'model': name,
            'ours_ms': ours_s * 1e3, 'peer_ms': peer_s * 1e3,
            'ours_images_per_s': batch / ours_s, 'peer_images_per_s': batch / peer_s,
            'ratio': statistics.median(ratios), 'rounds': ratios,
            'match': finite and accuracy >= dense_top1 - 1.0, 'max_abs_diff': None,
            'top1_ours': accuracy, 'top1_peer': dense_top1,
            'gmacs_ours': vit_macs(models[name], batch_images=inputs[:1])['total'] / 1e9, 'gmacs_peer': dense_macs,
        })
    return rows


def main():
    args = protocol.argument_parser(__doc__.split('\n\n')[0], '3 rounds of best of 3 instead of 5 of 5 (under 60 s on '
                                    '2 cores)').parse_args()
    rounds, repetitions = (3, 3) if args.quick else (5, 5)
    print(f'token_pruning_zoo benchmark{" (quick)" if args.quick else ""}: ours = the shipped pruned digits models, '
          f'peer = {DENSE} (dense, shipped weights)')
    cpu, gpu = protocol.describe_machine(args.device, args.threads)
    print(f'versions: sparsevision {sparsevision.__version__}, torch {torch.__version__}, '
          f'python {platform.python_version()}')
    print(f'digits validation split, eval, no_grad, float32, backbones only; {rounds} rounds, best of {repetitions}, '
          'order reversed every other round; ratio = ours/dense img/s (higher is better)\n')
    models = {name: create_model(name, checkpoint='zoo').eval().to(args.device) for name in (DENSE,) + PRUNED}
    images, labels = validation_inputs(models[DENSE], args.device)
    backbones = {name: model.backbone for name, model in models.items()}
    previous_threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            rows = [row for threads in args.threads for batch in BATCHES
                    for row in run(backbones, images, labels, batch, threads, rounds, repetitions, args.device)]
    finally:
        torch.set_num_threads(previous_threads)
    header = ['case', 'dense img/s', 'ours img/s', 'GMACs ours / dense', 'top-1 dense / ours', 'spread', 'ratio']
    protocol.print_table(header, [[
        row['case'].removesuffix(' (img/s)'), f'{row["peer_images_per_s"]:.0f}', f'{row["ours_images_per_s"]:.0f}',
        f'{row["gmacs_ours"]:.3f} / {row["gmacs_peer"]:.3f}', f'{row["top1_peer"]:.2f} / {row["top1_ours"]:.2f}',
        f'{min(row["rounds"]):.2f}-{max(row["rounds"]):.2f}', f'{row["ratio"]:.2f}'] for row in rows])
    print(f'\nload average {os.getloadavg()[0]:.2f} at end (above the thread count means other processes competed)')
    if args.json:
        protocol.write_json(args.json, 'token_pruning_zoo', f'sparsevision {DENSE} (dense)', args.device,
                            args.threads[0] if len(args.threads) == 1 else args.threads, cpu, gpu, rows)
    if not all(row['match'] for row in rows):
        sys.exit('a pruned model gave non-finite logits or lost more than 1 point of top-1')


if __name__ == '__main__':
    main()
