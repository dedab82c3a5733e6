"""What a zoo model takes, read from its config, so that each inferencer refuses a model it cannot run in one
clear error that names the models it can run and where the refused one runs instead."""
import functools
from pathlib import Path
from typing import Dict, Sequence

from mmengine.config import Config

from ..model_zoo import list_models, load_config, pretrained_weights
from ..registry import MODELS

IMAGE_CLASSIFIER = 'image classifier'
MASKED_AUTOENCODER = 'masked autoencoder (SparK, FCMAE)'
POINT_CLOUD_MODEL = 'point-cloud segmentor or detector'
SHAPE_CLASSIFIER = 'single-object point-cloud classifier'
EVENT_CLASSIFIER = 'event-camera classifier'

# The inferencer and demo that run each kind; a kind missing here has neither yet.
RUNS_IN = {
    IMAGE_CLASSIFIER: 'ImageClassificationInferencer (demo/image_demo.py)',
    MASKED_AUTOENCODER: 'MaskedReconstructionInferencer (demo/masked_reconstruction_demo.py)',
    POINT_CLOUD_MODEL: 'PointCloudInferencer (demo/pcd_demo.py)',
    SHAPE_CLASSIFIER: 'PointCloudInferencer (demo/pcd_demo.py)',
}


def model_kind(cfg: Config) -> str:
    """What the config's model takes and predicts: one of the kinds above, or a description of another input.

    Decided without building the model: from the model class (masked autoencoders) and otherwise from the test
    pipeline (how it packs its inputs, whether it voxelises raw points) and dataset.
    """
    from ..models.masked_pretraining import MaskedAutoencoder

    model_class = MODELS.get(cfg.model.type)
    if model_class is None:
        raise ValueError(f'model type {cfg.model.type!r} is not registered in sparsevision; is the config for '
                         'another library?')
    if issubclass(model_class, MaskedAutoencoder):
        return MASKED_AUTOENCODER
    if not cfg.get('test_dataloader'):
        return 'model without a test pipeline'
    dataset = cfg.test_dataloader.dataset
    transforms = {str(transform['type']).rsplit('.', 1)[-1] for transform in dataset.pipeline}
    if 'PackEventInputs' in transforms:
        return EVENT_CLASSIFIER
    if 'PackClassificationInputs' in transforms:
        return IMAGE_CLASSIFIER
    if 'Voxelize' in transforms:
        return POINT_CLOUD_MODEL
    if dataset.type == 'ShapeClassificationDataset':
        return SHAPE_CLASSIFIER
    return f'model of {dataset.type} samples (voxelised by that dataset, not from raw points)'


@functools.lru_cache(maxsize=None)
def zoo_model_kinds() -> Dict[str, str]:
    """The kind of every zoo model, by name (the configs are read once per process)."""
    return {name: model_kind(load_config(name)) for name in list_models()}


def model_name(cfg: Config, model) -> str:
    """The zoo name of a model given as a name, a config file or a Config."""
    if cfg.filename:
        return Path(cfg.filename).stem
    return 'the given config' if isinstance(model, Config) else str(model)


def check_model_kind(cfg: Config, model, accepted: Sequence[str], inferencer: str) -> str:
    """The model's kind when ``inferencer`` runs it (``accepted``); otherwise a ValueError naming the zoo models
    it runs and where this one runs instead.

    Args:
        cfg: the model's config.
        model: what the user passed (a zoo name, config file or Config), for the message.
        accepted: the kinds ``inferencer`` runs.
        inferencer: its class name.
    """
    kind = model_kind(cfg)
    if kind in accepted:
        return kind
    fitting = [name for name, zoo_kind in zoo_model_kinds().items() if zoo_kind in accepted]
    trained = [name for name in fitting if pretrained_weights(name)]
    untrained = [name for name in fitting if name not in trained]
    choices = ', '.join(trained)
    if untrained:
        choices += f'; given a checkpoint (none shipped): {", ".join(untrained)}'
    elsewhere = (f'it runs in {RUNS_IN[kind]}' if kind in RUNS_IN
                 else 'no inferencer or demo runs it yet; evaluate it with tools/test.py')
    raise ValueError(f'{model_name(cfg, model)} is {with_article(kind)}, which {inferencer} cannot run; '
                     f'{elsewhere}. {inferencer} runs these zoo models: {choices}')


def with_article(noun: str) -> str:
    """``'an image classifier'``, ``'a masked autoencoder'``."""
    return f'{"an" if noun[0] in "aeiou" else "a"} {noun}'
